"""The libvips path (`kohaku.download.resize_vips`, the default) against the Pillow path: same
checks, same placement, output size and pixels within 40 dB PSNR of Pillow's."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import pyvips
from PIL import Image

from kohaku.download import resize_vips
from kohaku.download.config import BucketConfig
from kohaku.download.placement import bucket_set, place
from kohaku.download.reasons import ImageRejected
from kohaku.download.resize import Options, decode, fit_encoded

CFG = BucketConfig()
BUCKETS = bucket_set(CFG)
GREEN = (0, 255, 0)


def locate(width: int, height: int):
    return place(width, height, CFG, BUCKETS)


def image_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def detailed(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth colour field with noise and a few hard lines: real work for a resampler."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    arr = np.asarray(field.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    arr = arr + rng.normal(0, 6, (h, w, 1)).astype(np.int16)
    arr[h // 3, :] = 0
    arr[:, w // 2] = 255
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def both(data: bytes, **kw) -> tuple:
    """(pyvips result, Pillow result, PSNR between their pixels); PNG output: lossless."""
    opts = {"image_format": "png", "background": GREEN, **kw}
    vips = fit_encoded(data, locate, Options(library="pyvips", **opts))
    pil = fit_encoded(data, locate, Options(library="pillow", **opts))
    return vips, pil, psnr(pixels(vips.data), pixels(pil.data))


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (8-bit grey) with a few bytes of data:
    decoding it would fail as truncated, so a pixel-limit error proves the check ran first."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)


@pytest.mark.parametrize(
    "size", [(700, 500), (500, 700), (640, 640), (900, 300), (1300, 1100), (2100, 600)]
)
def test_same_placement_bucket_size_and_pixels_as_pillow(size):
    vips, pil, db = both(image_bytes(detailed(*size), "JPEG", quality=95))
    assert vips.placement == pil.placement
    bucket = vips.placement.bucket
    assert Image.open(io.BytesIO(vips.data)).size == (bucket.width, bucket.height)
    assert db > 40


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (64, 64), (65, 1), (4000, 40), (40, 4000)])
def test_tiny_and_extreme_aspect_images(size):
    img = Image.new("RGB", size, (200, 40, 90))
    vips, pil, db = both(image_bytes(img))
    assert vips.placement == pil.placement
    bucket = vips.placement.bucket
    assert Image.open(io.BytesIO(vips.data)).size == (bucket.width, bucket.height)
    assert db > 40


def test_truncated_jpeg_is_rejected_even_where_the_crop_does_not_reach():
    # a tall image into one square bucket: the crop keeps the middle third, so a lazy
    # libvips pipeline never reads the cut end (it accepted these); a full decode does
    square = BucketConfig(area=256 * 256, min_side=256, max_side=256, step=64)
    p = place(300, 900, square, bucket_set(square))
    assert (p.resized, p.crop_top) == ((256, 768), 256)
    data = image_bytes(detailed(300, 900), "JPEG", quality=90)
    for cut in (len(data) // 2, int(len(data) * 0.8), int(len(data) * 0.95)):
        with pytest.raises(ImageRejected, match="not a readable image"):
            fit_encoded(data[:cut], lambda w, h: p, Options(library="pyvips"))


def test_truncated_png_and_non_images_are_rejected():
    data = image_bytes(detailed(300, 200))
    for bad in (data[: len(data) * 2 // 3], b"<html>not an image</html>", b""):
        with pytest.raises(ImageRejected, match="not a readable image"):
            fit_encoded(bad, locate, Options(library="pyvips"))


def test_pixel_limit_is_checked_before_any_pixel_is_decoded():
    bomb = png_header_only(60_000, 60_000)  # 3.6 G pixels claimed, 1 kB of data
    with pytest.raises(ImageRejected, match="pixel limit"):
        fit_encoded(bomb, locate, Options(library="pyvips", max_pixels=100_000_000))
    real = image_bytes(Image.new("L", (5000, 5000)))  # a small file of 25 MP
    with pytest.raises(ImageRejected, match="pixel limit"):
        fit_encoded(real, locate, Options(library="pyvips", max_pixels=10_000_000))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    vips, pil, db = both(image_bytes(detailed(600, 300), fmt, exif=exif.tobytes()))
    assert vips.placement.original == (300, 600) == pil.placement.original
    assert db > 40


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "1", "RGBA"])
def test_modes_decode_as_pillow_does(mode):
    src = detailed(500, 400)
    if mode in ("LA", "RGBA"):  # a soft alpha ramp
        alpha = Image.linear_gradient("L").resize(src.size)
        src = Image.merge("RGBA", (*src.split(), alpha))
    img = src.convert(mode)
    data = image_bytes(img, "JPEG", quality=95) if mode == "CMYK" else image_bytes(img)
    header = resize_vips.open_checked(data, 10**8)
    ours = resize_vips.load_rgb(header, data, GREEN)
    ours = np.ndarray((ours.height, ours.width, 3), np.uint8, ours.write_to_memory())
    theirs = np.asarray(decode(data, background=GREEN))
    assert np.abs(ours.astype(int) - theirs).max() <= 1  # rounding only
    if mode != "1":  # a dithered 1-bit image is all edges: Lanczos libraries differ there
        assert both(data)[2] > 40


def test_palette_transparency_and_alpha_are_flattened_onto_the_background():
    pal = Image.new("P", (300, 300), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 150, 300))  # left half blue, right half transparent red
    vips, pil, _ = both(image_bytes(pal, transparency=0))
    out = pixels(vips.data)
    assert tuple(out[10, 10]) == (0, 0, 255) and tuple(out[10, -10]) == GREEN
    assert psnr(out, pixels(pil.data)) > 40  # the edge between them is resampled
    clear = image_bytes(Image.new("RGBA", (300, 300), (255, 0, 0, 0)))
    assert np.all(pixels(fit_encoded(clear, locate, Options(background=GREEN,
                                                            image_format="png")).data)
                  == GREEN)  # fmt: skip
    gif = image_bytes(pal, "GIF", transparency=0)
    assert tuple(pixels(both(gif)[0].data)[10, -10]) == GREEN


def test_16_bit_grey_and_rgb_become_8_bit():
    grey = Image.new("I;16", (300, 200))
    grey.putdata([65535] * 60_000)
    vips, _, db = both(image_bytes(grey))
    assert np.all(pixels(vips.data) == 255) and db == float("inf")
    rng = np.random.default_rng(1)
    arr = (np.asarray(detailed(300, 200), dtype=np.uint16) * 257).astype(np.uint16)
    arr = (arr + rng.integers(0, 200, arr.shape)).astype(np.uint16)
    rgb16 = pyvips.Image.new_from_memory(arr.tobytes(), 300, 200, 3, "ushort")
    data = rgb16.copy(interpretation="rgb16").pngsave_buffer()
    assert resize_vips.open_checked(data, 10**8).format == "ushort"
    _, _, db = both(data)
    assert db > 40


def test_jpeg_draft_shrinks_on_load_and_keeps_quality():
    small = BucketConfig(area=128 * 128, min_side=64, max_side=256, step=64)
    data = image_bytes(detailed(640, 640), "JPEG", quality=95)
    p = place(640, 640, small, bucket_set(small))  # 128x128: a 1/2 draft still covers 2x
    assert resize_vips.jpeg_shrink(resize_vips.open_checked(data, 10**8), (256, 256)) == 2

    def run(library: str, draft: bool) -> bytes:
        opts = Options(library=library, jpeg_draft=draft, image_format="png")
        return fit_encoded(data, lambda w, h: p, opts).data

    assert psnr(pixels(run("pyvips", True)), pixels(run("pillow", False))) > 40


def test_other_formats_go_through_pillow():
    img = detailed(300, 200)
    for fmt in ("BMP", "TIFF"):
        vips, pil, db = both(image_bytes(img, fmt))
        assert vips.data == pil.data and db == float("inf")
