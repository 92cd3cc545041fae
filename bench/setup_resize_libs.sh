#!/usr/bin/env bash
# Create bench/.venv-resize with the image libraries compared by bench/resize_libs.py:
# Pillow, OpenCV (headless), pyvips (with the libvips shipped in pyvips-binary),
# simplejpeg and numpy. Idempotent: reuses the venv and skips pip when they import.
#
#   bash bench/setup_resize_libs.sh          # then: bench/.venv-resize/bin/python
#
# Reads nothing; writes bench/.venv-resize/ (git-ignored). Needs PyPI access (pip).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-resize"
py="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$py" -m venv "$venv"
fi

check='import PIL, cv2, pyvips, simplejpeg, numpy'
if "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "bench/.venv-resize is ready"
    exit 0
fi

"$venv/bin/python" -m pip install --quiet --upgrade pip
# the versions measured in bench/README.md
"$venv/bin/python" -m pip install --quiet pillow==13.0.0 opencv-python-headless==5.0.0.93 \
    pyvips==3.2.0 pyvips-binary==8.18.7 simplejpeg==1.9.0 numpy==2.4.6
"$venv/bin/python" -c "$check"
"$venv/bin/python" -c 'import importlib.metadata as m, pyvips
for p in ("pillow", "opencv-python-headless", "pyvips", "pyvips-binary", "simplejpeg", "numpy"):
    print(p, m.version(p))
print("libvips", ".".join(str(pyvips.version(i)) for i in range(3)))'
echo "bench/.venv-resize is ready"
