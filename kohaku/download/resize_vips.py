"""Decode and resize with libvips (pyvips): the download stage's default image path.

Reads nothing and writes nothing: `open_checked` reads only the header of image bytes
and refuses images over the pixel limit before any pixel is decoded, `load_rgb` decodes
the whole file into memory (a truncated or corrupt file fails there), applies the EXIF
orientation and turns palette / CMYK / 16-bit / grey / alpha into 8-bit RGB as
`kohaku.download.resize` (Pillow) does, `fit` resamples (Lanczos-3) only the part of the image
that survives the bucket's centre crop. libvips decodes + resizes the benchmark's JPEGs
in 47 CPU ms against Pillow's 118 at the same quality (bench/README.md, resize_libs.py).

Only JPEG, PNG, WebP and GIF are read here; `open_checked` returns None for anything
else, and the caller uses Pillow. Every load passes `fail_on="truncated"`: by default
libvips decodes a truncated JPEG without an error. A file that fails to decode is rejected
with a stable reason naming its format, never libvips' message: libvips keeps one error
buffer per process, so with threads the message can be another image's.
"""

from __future__ import annotations

import pyvips

from kohaku.download.placement import Placement
from kohaku.download.reasons import over_limit, unreadable

LOADERS = {"jpegload_buffer": "JPEG", "pngload_buffer": "PNG", "webpload_buffer": "WebP",
           "gifload_buffer": "GIF"}  # fmt: skip
ORIENTATION_SWAPS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees
JPEG_SHRINKS = (8, 4, 2)  # libjpeg's DCT scales 1/8, 1/4, 1/2

# Each image is decoded once and never again: libvips' operation cache would only hold
# the decoded pixels of past posts in memory.
pyvips.cache_set_max(0)


def open_checked(data: bytes, max_pixels: int) -> pyvips.Image | None:
    """The lazily opened image (header only), or None when libvips is not used for this
    format. Images over `max_pixels` are refused before any pixel is decoded."""
    img = _load(data)
    if img is None or img.get("vips-loader") not in LOADERS:
        return None
    if img.format not in ("uchar", "ushort") or img.bands > 4:
        return None  # no such PNG, JPEG, WebP or GIF comes from the loaders; Pillow decides
    if img.width * img.height > max_pixels:
        raise over_limit(max_pixels)
    return img


def _load(data: bytes, **options: int) -> pyvips.Image | None:
    try:
        return pyvips.Image.new_from_buffer(
            data, "", access="sequential", fail_on="truncated", **options
        )
    except pyvips.Error:
        return None


def oriented_size(img: pyvips.Image) -> tuple[int, int]:
    """The size once EXIF orientation is applied (orientations 5-8 swap the sides)."""
    return (img.height, img.width) if _swaps_sides(img) else (img.width, img.height)


def _swaps_sides(img: pyvips.Image) -> bool:
    return bool(img.get_typeof("orientation")) and img.get("orientation") in ORIENTATION_SWAPS


def jpeg_shrink(img: pyvips.Image, at_least: tuple[int, int]) -> int:
    """The largest DCT shrink (8, 4, 2; else 1) that keeps a JPEG at least `at_least`
    (width, height, in the displayed orientation); 1 for other formats."""
    if img.get("vips-loader") != "jpegload_buffer":
        return 1
    width, height = oriented_size(img)
    for shrink in JPEG_SHRINKS:
        if -(-width // shrink) >= at_least[0] and -(-height // shrink) >= at_least[1]:
            return shrink
    return 1


def load_rgb(
    img: pyvips.Image,
    data: bytes,
    background: tuple[int, int, int] = (255, 255, 255),
    shrink: int = 1,
) -> pyvips.Image:
    """Decode every pixel of `data` into memory (truncated or corrupt files fail here,
    even where the crop later uses only part of the image), EXIF orientation applied,
    as 8-bit RGB with transparency flattened onto `background`. `img` is the header
    `open_checked` gave; `shrink` > 1 decodes a JPEG at 1/`shrink` scale."""
    if shrink > 1:
        img = _load(data, shrink=shrink) or img
    try:
        img = img.copy_memory()
    except pyvips.Error:
        # libvips keeps one error buffer per process, so with threads the message may be
        # another image's ("libpng read error" for a JPEG): only the format is trusted
        raise unreadable(LOADERS.get(img.get("vips-loader")), "truncated or corrupt data") \
            from None  # fmt: skip
    return to_rgb(img.autorot(), background)


def to_rgb(img: pyvips.Image, background: tuple[int, int, int]) -> pyvips.Image:
    """8-bit RGB: 16-bit keeps its high byte (as Pillow), CMYK is converted with Pillow's
    formula (no colour management), grey is repeated, alpha is flattened."""
    if img.format == "ushort":
        img = (img >> 8).cast("uchar")
    if img.interpretation == "cmyk" and img.bands == 4:
        return _cmyk_to_rgb(img)
    if img.bands <= 2:  # grey, grey + alpha
        grey = img[0]
        img = grey.bandjoin([grey, grey] + ([img[1]] if img.bands == 2 else []))
    if img.bands == 4:
        img = img.flatten(background=list(background)).cast("uchar")
    return img.copy(interpretation="srgb")


def _cmyk_to_rgb(img: pyvips.Image) -> pyvips.Image:
    """R = (255 - C)(255 - K) / 255, and so on: what Pillow's convert("RGB") does."""
    ink = 255 - img[3]
    rgb = (255 - img[0:3]) * ink / 255
    return (rgb + 0.5).cast("uchar").copy(interpretation="srgb")


def fit(img: pyvips.Image, placement: Placement) -> pyvips.Image:
    """Resize to `placement.resized` (Lanczos-3) and crop to the bucket. libvips computes
    pixels on demand, so only the rows and columns the crop keeps are resampled."""
    width, height = placement.resized
    if (img.width, img.height) != (width, height):
        img = img.resize(width / img.width, vscale=height / img.height, kernel="lanczos3")
    if (img.width, img.height) != (width, height):  # libvips rounds; never seen, but checked
        raise RuntimeError(f"libvips resized to {img.width}x{img.height}, not {width}x{height}")
    bucket = placement.bucket
    return img.crop(placement.crop_left, placement.crop_top, bucket.width, bucket.height)
