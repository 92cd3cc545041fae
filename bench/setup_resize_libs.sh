#!/usr/bin/env bash
# Create bench/.venv-resize with the image libraries compared by bench/resize_libs.py
# (the versions measured in bench/README.md), and pydantic so that kohaku's own libvips path
# (kohaku.download.resize_vips, imported from the checkout) runs there too. Idempotent.
#   bash bench/setup_resize_libs.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh"
make_venv resize 'import PIL, cv2, pyvips, simplejpeg, numpy, pydantic' \
    pillow==13.0.0 opencv-python-headless==5.0.0.93 pyvips==3.2.0 pyvips-binary==8.18.7 \
    simplejpeg==1.9.0 numpy==2.4.6 pydantic==2.14.4
"$(dirname "${BASH_SOURCE[0]}")/.venv-resize/bin/python" -c 'import importlib.metadata as m, pyvips
for p in ("pillow", "opencv-python-headless", "pyvips", "pyvips-binary", "simplejpeg", "numpy",
          "pydantic"):
    print(p, m.version(p))
print("libvips", ".".join(str(pyvips.version(i)) for i in range(3)))'
