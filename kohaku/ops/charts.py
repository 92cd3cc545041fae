"""Small charts for the UI, drawn with Pillow (no plotting library): the training loss
curve. Reads a list of metric rows (`<run>/train/metrics.jsonl`); writes PNG bytes and
markdown with the picture embedded (Prefect's markdown artifacts render base64 images)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from kohaku.evaluate.report import _font, image_markdown, png_bytes

SIZE, LINE = (480, 220), (70, 110, 180)


def line_png(xs: Sequence[float], ys: Sequence[float], title: str) -> bytes:
    """A line chart of ys against xs, with the axes' ranges written at their ends."""
    img = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 4), title, "black", _font())
    left, top, right, bottom = 56, 24, SIZE[0] - 12, SIZE[1] - 24
    draw.line([(left, top), (left, bottom), (right, bottom)], "black")
    if not xs:
        draw.text((left + 8, top + 8), "no points yet", "black", _font())
        return png_bytes(img)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx, sy = (right - left) / ((x1 - x0) or 1), (bottom - top) / ((y1 - y0) or 1)
    points = [(left + (x - x0) * sx, bottom - (y - y0) * sy) for x, y in zip(xs, ys, strict=True)]
    if len(points) > 1:
        draw.line(points, LINE, width=2)
    draw.text((left - 4, top), f"{y1:.4g}", "black", _font(), anchor="ra")
    draw.text((left - 4, bottom), f"{y0:.4g}", "black", _font(), anchor="rs")
    draw.text((left, bottom + 4), f"{x0:g}", "black", _font(), anchor="la")
    draw.text((right, bottom + 4), f"{x1:g}", "black", _font(), anchor="ra")
    return png_bytes(img)


def loss_chart_markdown(metrics: Sequence[dict]) -> str:
    """The loss against the optimizer step, as markdown with the picture inside."""
    rows = [m for m in metrics if m.get("loss") is not None and "step" in m]
    png = line_png([m["step"] for m in rows], [m["loss"] for m in rows], "training loss by step")
    return "## Training loss\n\n" + image_markdown(png, "training loss")
