#!/usr/bin/env bash
# Create bench/.venv-img2dataset with img2dataset 1.47.0 (the reference downloader) for
# bench/download_compare.py. Idempotent: reuses the venv and skips pip when img2dataset
# 1.47.0 already imports.
#
#   bash bench/setup_img2dataset.sh          # then: bench/.venv-img2dataset/bin/python
#
# Reads nothing; writes bench/.venv-img2dataset/ (git-ignored). Needs PyPI access (pip).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-img2dataset"
py="${PYTHON:-python3}"
export NO_ALBUMENTATIONS_UPDATE=1  # albumentations checks PyPI for a newer version on import

if [[ ! -x "$venv/bin/python" ]]; then
    "$py" -m venv "$venv"
fi

check='import img2dataset, pyarrow, cv2
import importlib.metadata as m; assert m.version("img2dataset") == "1.47.0"'
if "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "bench/.venv-img2dataset is ready (img2dataset 1.47.0)"
    exit 0
fi

"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "img2dataset==1.47.0"
"$venv/bin/python" -c "$check"
echo "bench/.venv-img2dataset is ready (img2dataset 1.47.0)"
