"""Reading the training images: one bucket-sized file into uint8 RGB pixels.

Reads an image file that the download stage already fitted to its bucket; writes nothing.
JPEG and WebP are decoded by DECODERS[suffix] (measured at 1024x1024 in
bench/bench_loader.py: libvips and Pillow give the same pixels, FASTER is the faster one
per format); anything else, and any file that is not plain 8-bit RGB (grey, alpha,
palette, 16-bit), goes through Pillow's `convert("RGB")` as it always did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyvips
from PIL import Image

from kohaku.errors import InputError

# Each image is decoded once per step and never again: libvips' operation cache would only
# hold decoded pixels.
pyvips.cache_set_max(0)


def read_pillow(path: Path, bucket: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] through Pillow."""
    try:
        with Image.open(path) as img:
            _check_size(path, img.size, bucket)
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    except OSError as exc:  # not an image, truncated, corrupt
        raise InputError(f"{path} is not a readable image ({exc}): rerun the download "
                         "stage") from None  # fmt: skip


def read_vips(path: Path, bucket: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] through libvips; Pillow for what is not 8-bit, 3-band sRGB.
    `fail_on="truncated"`: by default libvips decodes a truncated file without an error."""
    try:
        img = pyvips.Image.new_from_file(str(path), access="sequential", fail_on="truncated")
    except pyvips.Error:
        return read_pillow(path, bucket)  # Pillow's error (or its wider format support)
    _check_size(path, (img.width, img.height), bucket)
    if img.bands != 3 or img.format != "uchar" or img.interpretation != "srgb":
        return read_pillow(path, bucket)
    try:
        data = img.write_to_memory()
    except pyvips.Error as exc:
        raise InputError(f"{path} is not a readable image ({str(exc).strip().splitlines()[-1]})"
                         ": rerun the download stage") from None  # fmt: skip
    return np.frombuffer(data, dtype=np.uint8).reshape(img.height, img.width, 3)


DECODERS = {"pillow": read_pillow, "vips": read_vips}
FASTER = {".jpg": "vips", ".jpeg": "vips", ".webp": "pillow"}  # bench/README.md, bench_loader


def read_image(path: Path, bucket: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] of a bucket-sized image; InputError when the file is gone or not of
    its bucket's (width, height)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is missing: rerun the download and buckets stages")
    return DECODERS[FASTER.get(path.suffix.lower(), "pillow")](path, bucket)


def _check_size(path: Path, size: tuple[int, int], bucket: tuple[int, int]) -> None:
    if tuple(size) != tuple(bucket):
        raise InputError(
            f"{path} is {size[0]}x{size[1]}, its bucket {bucket[0]}x{bucket[1]}: "
            "rerun the download stage (it fits every image to its bucket)"
        )
