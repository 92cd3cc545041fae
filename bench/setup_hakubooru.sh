#!/usr/bin/env bash
# Create bench/.venv-hakubooru with HakuBooru 0.0.3 (the reference captioner) for
# bench/hakubooru_compare.py. Idempotent: reuses the venv and skips pip when the
# packages already import.
#
#   bash bench/setup_hakubooru.sh            # then: bench/.venv-hakubooru/bin/python
#
# Reads nothing; writes bench/.venv-hakubooru/ (git-ignored). Needs PyPI access (pip).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-hakubooru"
py="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$py" -m venv "$venv"
fi

check='import hakubooru, hakubooru.caption, hakubooru.export, peewee, dateutil, webdataset, tqdm
import importlib.metadata as m; assert m.version("hakubooru") == "0.0.3"'
if "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "bench/.venv-hakubooru is ready (hakubooru 0.0.3)"
    exit 0
fi

"$venv/bin/python" -m pip install --quiet --upgrade pip
# hakubooru's own requirements (peewee, python-dateutil, webdataset) come with it;
# tqdm is imported by hakubooru.export but not declared.
"$venv/bin/python" -m pip install --quiet "hakubooru==0.0.3" peewee python-dateutil webdataset tqdm
"$venv/bin/python" -c "$check"
echo "bench/.venv-hakubooru is ready (hakubooru 0.0.3)"
