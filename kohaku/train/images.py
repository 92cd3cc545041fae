"""Reading the training images: one bucket-sized file into uint8 RGB pixels.

Reads an image file that the download stage already fitted to its bucket; writes nothing.
`read_image` picks the decoder per format by FASTER, measured at 1024x1024 with
bench/bench_loader.py (bench/README.md): WebP straight through libwebp's
`WebPDecodeRGBInto` (the libwebp that Pillow ships) into its slot of the batch, 20-25 %
less CPU than Pillow, whose WebP plugin decodes every file through libwebp's animation
decoder into an RGBX canvas, copied into Pillow's image and again into the array; JPEG and
the rest through Pillow (libvips, the
download stage's decoder, took 30-70 % more CPU for a plain decode of these files). The
decoders give the same pixels (tests/train/test_images.py); anything the libwebp path does
not handle (animation, no libwebp found) goes through Pillow's `convert("RGB")`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from kohaku.errors import InputError


def read_pillow(path: Path, bucket: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] through Pillow (into `out` when given)."""
    try:
        with Image.open(path) as img:
            _check_size(path, img.size, bucket)
            return _into(np.asarray(img if img.mode == "RGB" else img.convert("RGB")), out)
    except OSError as exc:  # not an image, truncated, corrupt
        raise InputError(f"{path} is not a readable image ({exc}): rerun the download "
                         "stage") from None  # fmt: skip


def read_libwebp(path: Path, bucket: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] of a still WebP, decoded by libwebp straight into `out` (or a new
    array); Pillow for anything its simple decoder refuses (animation, a damaged file)."""
    lib = _libwebp()
    if lib is None:
        return read_pillow(path, bucket, out)
    data = Path(path).read_bytes()
    width, height = ctypes.c_int(), ctypes.c_int()
    if not lib.WebPGetInfo(data, len(data), ctypes.byref(width), ctypes.byref(height)):
        return read_pillow(path, bucket, out)
    _check_size(path, (width.value, height.value), bucket)
    fits = out is not None and out.flags.c_contiguous
    dest = out if fits else np.empty((height.value, width.value, 3), dtype=np.uint8)
    if not lib.WebPDecodeRGBInto(data, len(data), dest.ctypes.data, dest.nbytes, dest.strides[0]):
        return read_pillow(path, bucket, out)
    return dest if fits else _into(dest, out)


@functools.cache
def _libwebp() -> ctypes.CDLL | None:
    """The libwebp of Pillow's wheel (`pillow.libs/`), else the system's; None if neither."""
    shipped = sorted(Path(PIL.__file__).parent.parent.glob("pillow.libs/libwebp-*.so*"))
    name = str(shipped[0]) if shipped else ctypes.util.find_library("webp")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if lib is not None:
        data, size, int_out = ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)
        lib.WebPGetInfo.argtypes = [data, size, int_out, int_out]
        lib.WebPDecodeRGBInto.argtypes = [data, size, ctypes.c_void_p, size, ctypes.c_int]
        lib.WebPDecodeRGBInto.restype = ctypes.c_void_p
    return lib


DECODERS = {"pillow": read_pillow, "libwebp": read_libwebp}
FASTER = {".webp": "libwebp"}  # the rest: Pillow (bench/README.md, bench_loader.py)


def read_image(path: Path, bucket: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] of a bucket-sized image (into `out` when given); InputError when the
    file is gone, not an image or not of its bucket's (width, height)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is missing: rerun the download and buckets stages")
    return DECODERS[FASTER.get(path.suffix.lower(), "pillow")](path, bucket, out)


def read_batch(paths: Sequence[Path], bucket: tuple[int, int]) -> np.ndarray:
    """uint8 [B, H, W, 3] of same-bucket images, each decoded into its slot."""
    out = np.empty((len(paths), bucket[1], bucket[0], 3), dtype=np.uint8)
    for path, slot in zip(paths, out, strict=True):
        read_image(path, bucket, slot)
    return out


def _into(pixels: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return pixels
    out[...] = pixels
    return out


def _check_size(path: Path, size: tuple[int, int], bucket: tuple[int, int]) -> None:
    if tuple(size) != tuple(bucket):
        raise InputError(
            f"{path} is {size[0]}x{size[1]}, its bucket {bucket[0]}x{bucket[1]}: "
            "rerun the download stage (it fits every image to its bucket)"
        )
