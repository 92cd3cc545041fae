#!/usr/bin/env bash
# Shared by the bench/setup_*.sh scripts: make_venv NAME CHECK PACKAGE...
# Creates bench/.venv-NAME (git-ignored) if missing, and pip-installs PACKAGE... unless the
# Python code CHECK already runs there; then runs CHECK again. Needs PyPI access (pip).
make_venv() {
    local name="$1" check="$2"
    shift 2
    local here venv
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    venv="$here/.venv-$name"
    if [[ ! -x "$venv/bin/python" ]]; then
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c "$check" 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet "$@"
        "$venv/bin/python" -c "$check"
    fi
    echo "bench/.venv-$name is ready"
}
