"""Decoding, normalising, fitting and encoding images built in the test."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from kohaku.download.config import BucketConfig
from kohaku.download.placement import bucket_set, place
from kohaku.download.reasons import ImageRejected, stable_reason
from kohaku.download.resize import decode, encode, fit

CFG = BucketConfig()
BUCKETS = bucket_set(CFG)


def image_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int, h: int, mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 255) // w, (y * 255) // h, 128) for y in range(h) for x in range(w)])
    return img.convert(mode)


def test_rgba_is_flattened_onto_the_background():
    img = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent red
    out = decode(image_bytes(img), background=(0, 255, 0))
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (0, 255, 0)


@pytest.mark.parametrize("mode", ["P", "L", "CMYK", "LA"])
def test_other_modes_become_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode(image_bytes(gradient(32, 16, mode), fmt))
    assert out.mode == "RGB" and out.size == (32, 16)


def test_16_bit_grey_becomes_8_bit_rgb():
    img = Image.new("I;16", (8, 8))
    img.putdata([65535] * 64)
    out = decode(image_bytes(img))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = gradient(60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode(image_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 60)


def test_truncated_and_non_images_are_rejected():
    data = image_bytes(gradient(64, 64), "JPEG")
    with pytest.raises(ImageRejected, match="not a readable image"):
        decode(data[: len(data) // 2])
    with pytest.raises(ImageRejected, match="not a readable image"):
        decode(b"<html>not an image</html>")


def test_pixel_limit_stops_decompression_bombs_before_decoding():
    data = image_bytes(Image.new("L", (5000, 5000)), "PNG")  # small file, 25 MP
    with pytest.raises(ImageRejected, match="pixel limit"):
        decode(data, max_pixels=10_000_000)


def test_jpeg_draft_decodes_at_a_reduced_scale_but_not_below_the_request():
    data = image_bytes(gradient(400, 300), "JPEG")
    out = decode(data, draft=(100, 75))
    assert 100 <= out.size[0] < 400 and 75 <= out.size[1] < 300


@pytest.mark.parametrize("size", [(2000, 1400), (300, 900), (1024, 1024)])
def test_fit_gives_exactly_the_bucket_size(size):
    img = gradient(*size) if size[0] * size[1] < 400_000 else Image.new("RGB", size, "blue")
    p = place(*size, CFG, BUCKETS)
    out = fit(img, p)
    assert out.size == (p.bucket.width, p.bucket.height)


@pytest.mark.parametrize("fmt", ["webp", "jpeg", "png"])
def test_encode_round_trips(fmt):
    img = Image.new("RGB", (64, 48), (10, 200, 30))
    out = Image.open(io.BytesIO(encode(img, fmt, quality=95)))
    assert out.size == (64, 48) and out.format == fmt.upper()
    r, g, b = out.convert("RGB").getpixel((10, 10))
    assert abs(r - 10) < 6 and abs(g - 200) < 6 and abs(b - 30) < 6


@pytest.mark.parametrize(
    ("message", "stable"),
    [
        ("cannot identify image file <_io.BytesIO object at 0x7f649c52bbf0>",
         "cannot identify image file"),
        ("image file is truncated (185 bytes not processed)", "image file is truncated"),
        ("[Errno 13] Permission denied: '/data/x/.1.webp.0badc0de.tmp-41'",
         "[Errno 13] Permission denied: <path>"),
        ("failed at /tmp/pytest-7/a.png.", "failed at <path>"),
        ("broken data stream when reading image file",) * 2,
    ],
)  # fmt: skip
def test_library_messages_lose_their_per_item_detail(message, stable):
    assert stable_reason(message) == stable


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"", "empty body"), (b"  <!DOCTYPE html><html>", "an HTML page"),
        (b'{"success": false}', "JSON text"), (b"\x89PNG\r\n\x1a\n\x00", "broken PNG header"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "broken WebP header"), (b"\x00\x01", "unknown format"),
    ],
)  # fmt: skip
def test_a_body_no_decoder_knows_is_named(data, what):
    with pytest.raises(ImageRejected) as one:
        decode(data)
    assert str(one.value) == f"not a readable image: {what}"


def test_pillows_own_bomb_limit_gives_the_same_reason_as_ours(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # Pillow refuses over 2 MP
    data = image_bytes(Image.new("1", (2000, 1500)), "PNG")
    with pytest.raises(ImageRejected) as ours:
        decode(data, max_pixels=1_500_000)
    assert str(ours.value) == "image over the 1500000 pixel limit (download.max_pixels)"
    with pytest.raises(ImageRejected) as pillows:
        decode(data, max_pixels=10_000_000)  # above Pillow's: its words, without the size
    assert "decompression bomb" in str(pillows.value) and "3000000" not in str(pillows.value)
