#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh installs on the lent GPU machine (Python 3.12,
# torch with CUDA, no registry): what the train path imports that its image lacks
# (shared/stack-notes.md; the device tool's KINDS.md lists its packages). Into .whl/
# (git-ignored); the device call carries it: run(..., carry=[".whl"]). About 50 MB of the
# 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
platforms=()
for n in 2_28 2_27 2_24 2_17; do platforms+=(--platform "manylinux_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in diffusers lycoris-lora bitsandbytes pydantic pydantic-core annotated-types \
           typing-inspection toml importlib-metadata; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$pkg==$(version "$pkg")"
done
du -ch .whl/*.whl | tail -1
