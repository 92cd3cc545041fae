"""Image normalisation and resizing to a bucket (pure functions on Pillow images).

Reads nothing and writes nothing: `decode` turns bytes into a verified RGB image
(EXIF orientation applied, palette / CMYK / 16-bit / grey converted, alpha flattened
onto a background, a pixel limit against decompression bombs), `fit` resizes and
centre-crops it to a `Placement`, `encode` turns it back into bytes.
"""

from __future__ import annotations

import io
from typing import Literal

from PIL import Image, ImageOps

from kohaku.buckets import Placement

Format = Literal["webp", "jpeg", "png"]


class ImageRejected(ValueError):
    """The bytes are not an image we keep; the message says why (recorded per post)."""


def decode(
    data: bytes,
    max_pixels: int = 100_000_000,
    background: tuple[int, int, int] = (255, 255, 255),
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Fully decode `data` into an RGB image. `draft` (a size) lets JPEG decode at a
    reduced scale that is still at least that size (much faster for big photos)."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise ImageRejected(f"{width}x{height} exceeds the {max_pixels} pixel limit")
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", draft)
        img.load()  # full decode: truncated or corrupt files fail here
    except ImageRejected:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageRejected(f"not a readable image: {exc}") from None
    return to_rgb(ImageOps.exif_transpose(img), background)


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB, with any transparency flattened onto `background`."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")  # 16-bit grey to 8-bit
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB") if img.mode != "RGB" else img


def fit(img: Image.Image, placement: Placement) -> Image.Image:
    """Resize to `placement.resized` (Lanczos) and crop to the bucket."""
    if img.size != placement.resized:
        img = img.resize(placement.resized, Image.Resampling.LANCZOS)
    left, top = placement.crop_left, placement.crop_top
    box = (left, top, left + placement.bucket.width, top + placement.bucket.height)
    return img.crop(box)


def encode(img: Image.Image, fmt: Format = "webp", quality: int = 90) -> bytes:
    """Encode as WebP, JPEG or PNG (PNG ignores `quality`)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, method=4)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()
