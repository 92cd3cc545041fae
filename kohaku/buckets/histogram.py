"""The bucket histogram: images per bucket (`histogram`), drawn as a PNG bar chart with
Pillow (`histogram_png`: the same histogram gives the same bytes) and embedded in markdown
for the UI (`histogram_markdown`; the Prefect UI renders base64 images inside markdown
artifacts). Reads a frame of placements; writes nothing.
"""

from __future__ import annotations

import base64
import io
import math
from functools import cache

import polars as pl
from PIL import Image, ImageDraw, ImageFont

PNG_SIZE = (900, 400)


def histogram(images: pl.DataFrame) -> dict[str, int]:
    """Images per bucket as {"WxH": count}, sorted by aspect ratio (w/h), then width."""
    counts = images.group_by("bucket_w", "bucket_h").len().rows()
    counts.sort(key=lambda r: (r[0] / r[1], r[0]))
    return {f"{w}x{h}": n for w, h, n in counts}


def histogram_png(hist: dict[str, int]) -> bytes:
    """A bar chart of the histogram, PNG_SIZE pixels; the same histogram gives the same
    bytes. Labels and counts are drawn vertically; when bars are too narrow for every
    label, every k-th bar is labelled."""
    img = Image.new("RGB", PNG_SIZE, "white")
    draw = ImageDraw.Draw(img)
    total = sum(hist.values())
    draw.text((8, 6), f"images per bucket: {total} images, {len(hist)} buckets", "black", _font())
    left, top, right, base = 40, 24, PNG_SIZE[0] - 10, PNG_SIZE[1] - 64
    draw.line([(left, top), (left, base), (right, base)], "black")
    if not hist:
        return _png(img)
    slot = (right - left) / len(hist)
    stride = math.ceil(14 / slot)  # a vertical label is about 12 px wide
    tallest = max(hist.values())
    scale = (base - top - 48) / tallest  # room above the tallest bar for its count
    draw.text((left - 4, base - tallest * scale), str(tallest), "black", _font(), anchor="rm")
    for i, (label, count) in enumerate(hist.items()):
        x0 = left + i * slot + slot * 0.1
        x1 = max(x0, left + (i + 1) * slot - slot * 0.1 - 1)
        y = base - count * scale
        draw.rectangle([(x0, min(y, base - 1)), (x1, base - 1)], fill=(70, 110, 180))
        if i % stride == 0:
            centre = round((x0 + x1) / 2)
            _vertical_text(img, label, centre, base + 4, below=True)
            _vertical_text(img, str(count), centre, round(y) - 4, below=False)
    return _png(img)


def histogram_markdown(png: bytes, hist: dict[str, int]) -> str:
    """Markdown with the chart embedded as a data URI, then a table of the buckets."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    rows = [f"| {label} | {_aspect(label):.2f} | {count} |" for label, count in hist.items()]
    table = ["| bucket | aspect | images |", "|---|---:|---:|", *rows]
    return "\n".join([f"![bucket histogram]({uri})", "", *table, ""])


def _aspect(label: str) -> float:
    w, h = label.split("x")
    return int(w) / int(h)


def _vertical_text(img: Image.Image, text: str, centre: int, y: int, below: bool) -> None:
    """Text rotated to read bottom-up, centred on x = `centre`, starting `y` (below) or
    ending at `y` (above)."""
    font = _font()
    _, _, w, h = font.getbbox(text)
    mask = Image.new("L", (w, h))
    ImageDraw.Draw(mask).text((0, 0), text, 255, font)
    mask = mask.transpose(Image.Transpose.ROTATE_90)
    top = y if below else y - mask.height
    img.paste("black", (centre - mask.width // 2, top), mask)


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)  # Pillow writes no timestamp: same bytes
    return buf.getvalue()
