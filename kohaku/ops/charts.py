"""Small charts for the UI, drawn with Pillow (no plotting library): the training loss
curve, with the held-out validation loss (and the EMA weights' one) on the same axes when
the run measured them. Reads a list of metric rows (`<run>/train/metrics.jsonl`: `loss` on
every line, `val_loss` and `val_loss_ema` on the validation steps' lines); writes PNG bytes
and markdown with the picture embedded (Prefect's markdown artifacts render base64 images)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from kohaku.evaluate.report import _font, image_markdown, png_bytes

SIZE, LINE = (480, 220), (70, 110, 180)
# the metric line's key -> its name in the legend and its colour
CURVES = {"loss": ("training", LINE), "val_loss": ("validation", (200, 60, 50)),
          "val_loss_ema": ("validation, EMA", (215, 140, 40))}  # fmt: skip


@dataclass(frozen=True)
class Curve:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: tuple[int, int, int] = LINE


def line_png(xs: Sequence[float], ys: Sequence[float], title: str) -> bytes:
    """A line chart of ys against xs, with the axes' ranges written at their ends."""
    return curves_png([Curve("", xs, ys)], title)


def curves_png(curves: Sequence[Curve], title: str) -> bytes:
    """Line charts on shared axes; a legend of their names when there are several. A
    curve of few points (validation every K steps) gets a dot on each."""
    img = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 4), title, "black", _font())
    left, top, right, bottom = 56, 24, SIZE[0] - 12, SIZE[1] - 24
    draw.line([(left, top), (left, bottom), (right, bottom)], "black")
    xs = [x for c in curves for x in c.xs]
    ys = [y for c in curves for y in c.ys]
    if not xs:
        draw.text((left + 8, top + 8), "no points yet", "black", _font())
        return png_bytes(img)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx, sy = (right - left) / ((x1 - x0) or 1), (bottom - top) / ((y1 - y0) or 1)
    for c in curves:
        points = [(left + (x - x0) * sx, bottom - (y - y0) * sy)
                  for x, y in zip(c.xs, c.ys, strict=True)]  # fmt: skip
        if len(points) > 1:
            draw.line(points, c.color, width=2)
        for px, py in points if len(points) <= 50 and len(curves) > 1 else []:
            draw.ellipse([(px - 2, py - 2), (px + 2, py + 2)], fill=c.color)
    _legend(draw, [c for c in curves if c.xs] if len(curves) > 1 else [], right)
    draw.text((left - 4, top), f"{y1:.4g}", "black", _font(), anchor="ra")
    draw.text((left - 4, bottom), f"{y0:.4g}", "black", _font(), anchor="rs")
    draw.text((left, bottom + 4), f"{x0:g}", "black", _font(), anchor="la")
    draw.text((right, bottom + 4), f"{x1:g}", "black", _font(), anchor="ra")
    return png_bytes(img)


def _legend(draw: ImageDraw.ImageDraw, curves: Sequence[Curve], right: int) -> None:
    x = right
    for c in reversed(curves):
        draw.text((x, 4), c.name, c.color, _font(), anchor="ra")
        x -= int(draw.textlength(c.name, _font())) + 12


def loss_curves(metrics: Sequence[dict]) -> list[Curve]:
    """The training loss and, where the lines carry them, the validation losses."""
    curves = []
    for key, (name, color) in CURVES.items():
        rows = [m for m in metrics if m.get(key) is not None and "step" in m]
        if rows or key == "loss":
            curves.append(Curve(name, [m["step"] for m in rows], [m[key] for m in rows], color))
    return curves


def loss_chart_markdown(metrics: Sequence[dict]) -> str:
    """The loss against the optimizer step (and the validation loss, when measured), as
    markdown with the picture inside."""
    curves = loss_curves(metrics)
    title = "training loss by step" if len(curves) == 1 else "loss by step"
    return "## Training loss\n\n" + image_markdown(curves_png(curves, title), "training loss")


def metric_table(metrics: Sequence[dict]) -> list[dict]:
    """Metric lines as table rows with the same columns each (a line without a validation
    loss gets an empty one), so that a table shows every column whatever its first row."""
    keys = list(dict.fromkeys(k for m in metrics for k in m))
    return [{k: m.get(k) for k in keys} for m in metrics]
