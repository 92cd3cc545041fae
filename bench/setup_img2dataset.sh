#!/usr/bin/env bash
# Create bench/.venv-img2dataset with img2dataset 1.47.0 (the reference downloader) for
# bench/download_compare.py. Idempotent.   bash bench/setup_img2dataset.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
export NO_ALBUMENTATIONS_UPDATE=1  # albumentations checks PyPI for a newer version on import
make_venv img2dataset 'import img2dataset, pyarrow, cv2
import importlib.metadata as m; assert m.version("img2dataset") == "1.47.0"' \
    "img2dataset==1.47.0"
