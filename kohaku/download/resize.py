"""Image normalisation and resizing to a bucket (pure functions).

Reads nothing and writes nothing: `fit_encoded` turns image bytes into the encoded
bucket-sized image and its `Placement`, through libvips (`kohaku.download.resize_vips`, the
default: 2.5x less CPU for decode + resize at the same quality) or Pillow (this module).
Pillow path: `decode` turns bytes into a verified RGB image (EXIF orientation applied,
palette / CMYK / 16-bit / grey converted, alpha flattened onto a background, a pixel
limit against decompression bombs), `fit` resizes and centre-crops it to a `Placement`;
`encode` (Pillow, for both paths) turns the result into bytes.
A rejected image's reason is a stable text (`ImageRejected`): the format and what is wrong,
never per-item noise such as object addresses, byte counts or paths, so the same failure
reads the same for every post and the UI's error table groups them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageOps

from kohaku.download.config import Format, Library
from kohaku.download.placement import Placement
from kohaku.download.reasons import (  # noqa: F401  (ImageRejected: re-exported)
    ImageRejected,
    over_limit,
    stable_reason,
    unreadable,
    what_it_is,
)


def decode(
    data: bytes,
    max_pixels: int = 100_000_000,
    background: tuple[int, int, int] = (255, 255, 255),
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Fully decode `data` into an RGB image. `draft` (a size, in the stored orientation)
    lets JPEG decode at a reduced scale that is still at least that size (much faster for
    big photos)."""
    return load_rgb(open_checked(data, max_pixels), background, draft)


def open_checked(data: bytes, max_pixels: int = 100_000_000) -> Image.Image:
    """Open `data` lazily (header only) and refuse images over `max_pixels`, before any
    pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit
        if Image.MAX_IMAGE_PIXELS and max_pixels <= 2 * Image.MAX_IMAGE_PIXELS:
            raise over_limit(max_pixels) from None  # so over ours too: the same reason
        raise ImageRejected(f"not a readable image: {stable_reason(str(exc))}") from None
    except (OSError, SyntaxError, ValueError):
        # Pillow's words for one broken header vary with where it is cut ("cannot identify
        # image file", "Truncated File Read"): what the bytes are is the stable reason
        raise ImageRejected(f"not a readable image: {what_it_is(data)}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise over_limit(max_pixels)
    return img


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """The size once EXIF orientation is applied (orientations 5-8 swap the sides)."""
    width, height = img.size
    return (height, width) if _swaps_sides(img) else (width, height)


def stored_size(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """`size` given in the displayed orientation, in the file's stored orientation."""
    return (size[1], size[0]) if _swaps_sides(img) else size


def _swaps_sides(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError):
        return False


def load_rgb(
    img: Image.Image,
    background: tuple[int, int, int] = (255, 255, 255),
    draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Fully decode an opened image (truncated or corrupt files fail here) into RGB,
    EXIF orientation applied."""
    try:
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", draft)
        img.load()
        img = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise unreadable(img.format, stable_reason(str(exc))) from None
    return to_rgb(img, background)


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
    """Resize to `placement.resized` (Lanczos) and crop to the bucket. Only the part that
    survives the crop is resampled (`resize(box=)`: same pixel centres and taps, 19 % less
    CPU on the benchmark's images, bench/README.md "resize_libs.py")."""
    left, top = placement.crop_left, placement.crop_top
    width, height = placement.bucket.width, placement.bucket.height
    if img.size == placement.resized:
        return img.crop((left, top, left + width, top + height))
    sx, sy = img.width / placement.resized[0], img.height / placement.resized[1]
    box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
    return img.resize((width, height), Image.Resampling.LANCZOS, box=box)


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


@dataclass(frozen=True)
class Options:
    """How `fit_encoded` checks, decodes and encodes (the download config's fields)."""

    library: Library = "pyvips"
    max_pixels: int = 100_000_000
    background: tuple[int, int, int] = (255, 255, 255)
    jpeg_draft: bool = True
    image_format: Format = "webp"
    quality: int = 90


@dataclass(frozen=True)
class Fitted:
    placement: Placement
    data: bytes


def fit_encoded(data: bytes, locate: Callable[[int, int], Placement], opts: Options) -> Fitted:
    """Verify and decode `data`, resize it to the placement `locate` gives for its
    (oriented) size, encode. libvips reads JPEG, PNG, WebP and GIF; other formats, and
    everything when `opts.library` is "pillow", go through Pillow."""
    if opts.library == "pyvips":
        from kohaku.download import resize_vips  # loads libvips only when it is used

        img = resize_vips.open_checked(data, opts.max_pixels)
        if img is not None:
            placement = locate(*resize_vips.oriented_size(img))
            shrink = resize_vips.jpeg_shrink(img, _draft_size(placement)) if opts.jpeg_draft else 1
            rgb = resize_vips.load_rgb(img, data, opts.background, shrink)
            out = to_pil(resize_vips.fit(rgb, placement))
            return Fitted(placement, encode(out, opts.image_format, opts.quality))
    img = open_checked(data, opts.max_pixels)
    placement = locate(*oriented_size(img))
    draft = stored_size(img, _draft_size(placement)) if opts.jpeg_draft else None
    out = fit(load_rgb(img, opts.background, draft), placement)
    return Fitted(placement, encode(out, opts.image_format, opts.quality))


def _draft_size(placement: Placement) -> tuple[int, int]:
    # at least 2x the target: a DCT draft at the target size itself blurs line art
    # (about 30 dB PSNR against 56, bench/README.md "resize_libs.py")
    return (2 * placement.resized[0], 2 * placement.resized[1])


def to_pil(vips_img) -> Image.Image:  # a pyvips.Image, 8-bit RGB
    """The pixels of an 8-bit RGB libvips image as a Pillow image (one copy)."""
    size = (vips_img.width, vips_img.height)
    return Image.frombuffer("RGB", size, vips_img.write_to_memory(), "raw", "RGB", 0, 1)
