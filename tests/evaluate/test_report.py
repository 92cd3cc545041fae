"""Grids, trend chart, tables and markdown for the UI (pure, Pillow only)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from kohaku.evaluate import report
from kohaku.evaluate.scores import Summary, ok, skipped


def summaries() -> list[Summary]:
    def metrics(clip: float, fid: float) -> tuple:
        return (ok("clip_score", clip, 4), skipped("ccip_match", "no CCIP model given"),
                ok("fid", fid, 4))  # fmt: skip

    return [Summary("final", None, metrics(30.0, 9.0)), Summary("base", 0, metrics(20.0, 12.0)),
            Summary("step-000100", 100, metrics(25.0, 10.0))]  # fmt: skip


def test_grid_png_lays_out_rows_and_columns() -> None:
    pictures = [[Image.new("RGB", (64, 96), c), None] for c in ("red", "blue", "green")]
    png = report.grid_png(pictures, ["seed 0", "a-very-long-checkpoint-label"],
                          ["hatsune miku", "b", "c"], cell=40)  # fmt: skip
    img = Image.open(io.BytesIO(png))
    assert img.size == (report.LABEL_W + 2 * 44 + 4, report.HEADER_H + 3 * 44 + 4)
    x, y = report.LABEL_W + 4 + 20, report.HEADER_H + 4 + 20
    assert img.getpixel((x, y)) == (255, 0, 0)  # first row, first column
    assert img.getpixel((x + 44, y)) == (255, 255, 255)  # None: blank
    assert png == report.grid_png(pictures, ["seed 0", "a-very-long-checkpoint-label"],
                                  ["hatsune miku", "b", "c"], cell=40)  # fmt: skip


def test_scores_and_trend_tables() -> None:
    rows = report.scores_table(summaries())
    assert rows[0] == {"checkpoint": "final", "step": None, "clip_score": 30.0, "ccip_difference":
                       None, "ccip_match": None, "fid": 9.0, "kid": None,
                       "skipped": "ccip_match: no CCIP model given"}  # fmt: skip
    trend = report.trend_table(summaries())
    assert [r["metric"] for r in trend] == ["clip_score", "fid"]
    assert trend[0] == {"metric": "clip_score", "better": "higher", "base": 20.0,
                        "step-000100": 25.0, "final": 30.0, "change": 10.0}  # fmt: skip
    assert trend[1]["better"] == "lower" and trend[1]["change"] == -3.0


def test_trend_png_and_markdown() -> None:
    png = report.trend_png(summaries())
    img = Image.open(io.BytesIO(png))
    assert img.size == (2 * report.PANEL[0], report.PANEL[1])  # two scored metrics
    assert (np.asarray(img) == report.LINE).all(axis=-1).any()
    markdown = report.trend_markdown(png, summaries())
    data = markdown.split("data:image/png;base64,")[1].split(")")[0]
    assert base64.b64decode(data) == png
    assert "| metric | better | base | step-000100 | final | change |" in markdown
    empty = Image.open(io.BytesIO(report.trend_png([Summary("base", 0, ())])))
    assert empty.size == report.PANEL


def test_grid_markdown_has_the_picture_and_the_scores() -> None:
    png = report.grid_png([[Image.new("RGB", (8, 8))]], ["seed 0"], ["x"], cell=32)
    markdown = report.grid_markdown(png, summaries()[1])
    assert markdown.startswith("### base") and "![base samples](data:image/png;base64," in markdown
    assert "| checkpoint | step | clip_score |" in markdown and "| base | 0 | 20 |" in markdown


def test_a_large_picture_travels_as_a_small_jpeg_and_names_the_full_file(tmp_path) -> None:
    """A grid of noisy pictures (what random weights draw) is megabytes of PNG; the
    artifact carries a JPEG under `PICTURE_BYTES` (Prefect refuses events over 1.5 MB)."""
    noise = np.random.default_rng(0).integers(0, 256, (1600, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG", compress_level=1)
    png, full = buf.getvalue(), tmp_path / "grid.png"
    assert len(png) > 2 * report.PICTURE_BYTES
    markdown = report.grid_markdown(png, summaries()[1], full)
    data = base64.b64decode(markdown.split("data:image/jpeg;base64,")[1].split(")")[0])
    assert len(data) <= report.PICTURE_BYTES
    small = Image.open(io.BytesIO(data))
    assert small.format == "JPEG" and max(small.size) <= report.PICTURE_SIDE
    assert abs(small.width / small.height - 400 / 1600) < 0.01  # the grid's shape kept
    assert f"full size: `{full}`" in markdown and "| base | 0 | 20 |" in markdown
    tiny = report.png_bytes(Image.new("RGB", (16, 16), "red"))
    assert report.small_picture(tiny) == ("image/png", tiny)  # a small PNG travels as it is
