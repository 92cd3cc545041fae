"""The UI's loss chart: the training loss, and the validation losses on the same axes when
the metric lines carry them (Pillow only)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from kohaku.ops.charts import (
    CURVES,
    curves_png,
    line_png,
    loss_chart_markdown,
    loss_curves,
    metric_table,
)


def metrics(validation: bool) -> list[dict]:
    rows = [{"step": s, "loss": 1.0 - s / 100, "lr_unet": 1e-4} for s in range(1, 41)]
    for row in rows if validation else []:
        if row["step"] % 10 == 0:
            row |= {"val_loss": 0.9 - row["step"] / 200, "val_loss_ema": 0.88 - row["step"] / 200}
    return rows


def colours(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def has(img: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((img == colour).all(axis=-1).any())


def test_the_validation_curves_join_the_training_loss():
    curves = loss_curves(metrics(validation=True))
    assert [c.name for c in curves] == ["training", "validation", "validation, EMA"]
    assert curves[1].xs == [10, 20, 30, 40] and curves[1].ys[0] == 0.85
    img = colours(curves_png(curves, "loss by step"))
    for _, colour in CURVES.values():
        assert has(img, colour), colour
    markdown = loss_chart_markdown(metrics(validation=True))
    png = base64.b64decode(markdown.split("data:image/png;base64,")[1].split(")")[0])
    assert has(colours(png), CURVES["val_loss"][1])


def test_without_validation_the_chart_is_the_training_loss_alone():
    rows = metrics(validation=False)
    (curve,) = loss_curves(rows)
    assert curve.xs == list(range(1, 41))
    assert curves_png([curve], "training loss by step") == line_png(
        curve.xs, curve.ys, "training loss by step"
    )
    assert not has(colours(line_png(curve.xs, curve.ys, "t")), CURVES["val_loss"][1])
    assert has(colours(line_png([], [], "t")), (0, 0, 0))  # "no points yet"


def test_the_metric_table_has_the_same_columns_on_every_row():
    rows = metric_table(metrics(validation=True)[5:12])
    assert [list(r) for r in rows] == [["step", "loss", "lr_unet", "val_loss", "val_loss_ema"]] * 7
    assert rows[0]["val_loss"] is None and rows[4]["val_loss"] == 0.85
