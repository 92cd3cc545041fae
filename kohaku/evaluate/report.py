"""What the evaluation shows a person: picture grids, the score table and the trend of each
score across checkpoints (a line chart drawn with Pillow), and markdown that embeds a
picture as a data URI (the Prefect UI renders base64 pictures inside markdown artifacts):
the PNG itself when it is small, else a JPEG of at most `PICTURE_BYTES`, with the
full-size file named beside it (an artifact travels in a server event, refused above
1.5 MB: `PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES`, and is stored in the server's database).

The drawing functions are pure: they take pictures and `Summary` objects and return PNG
bytes, markdown and table rows (lists of dicts, what `create_table_artifact` takes); the
same inputs give the same bytes. `build_report` reads the evaluate stage's files
(`<run>/evaluate/scores.json`, `grid.png` of each checkpoint, `comparison.png`,
`trend.png`) and writes nothing. No torch: a flow renders its artifacts without it.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from kohaku.errors import InputError
from kohaku.evaluate.scores import Summary

STAGE = "evaluate"
METRICS = ("clip_score", "ccip_difference", "ccip_match", "fid", "kid")
LOWER_IS_BETTER = {"ccip_difference", "fid", "kid"}
LABEL_W, HEADER_H, PAD, LINE_H = 120, 30, 4, 13
PANEL = (300, 170)
LINE = (70, 110, 180)
EMA_LINE = (215, 120, 40)  # the EMA's weights (labels ending in -ema) beside the raw ones
PICTURE_BYTES = 256 * 1024  # a picture in an artifact: the PNG up to this, else a JPEG under it
PICTURE_SIDE = 2048  # the longest side of an embedded picture (a grid's rows stay legible)


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=11)  # FreeType: unlike the bitmap font, real spaces


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)  # Pillow writes no timestamp: same bytes
    return buf.getvalue()


def thumbnail(img: Image.Image, cell: int) -> Image.Image:
    """`img` with its longer side scaled to `cell` pixels."""
    scale = cell / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    return img.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def wrap(text: str, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels of the default font (long words cut)."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if _font().getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    return [_cut(x, width) for x in lines if x]


def _chunks(text: str, width: int) -> list[str]:
    """`text` cut into pieces of at most `width` pixels (column headers)."""
    out = []
    while text:
        piece = _cut(text, width) or text[0]
        out.append(piece)
        text = text[len(piece) :]
    return out


def _cut(text: str, width: int) -> str:
    while text and _font().getlength(text) > width:
        text = text[:-1]
    return text


def grid_png(
    rows: Sequence[Sequence[Image.Image | None]],
    columns: Sequence[str],
    row_labels: Sequence[str],
    cell: int = 160,
) -> bytes:
    """A table of pictures: a header with `columns`, each row led by its wrapped label;
    every picture is fitted into a `cell` x `cell` square (None: left blank)."""
    width = LABEL_W + len(columns) * (cell + PAD) + PAD
    height = HEADER_H + len(rows) * (cell + PAD) + PAD
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for c, name in enumerate(columns):
        x = LABEL_W + c * (cell + PAD) + PAD
        for i, line in enumerate(_chunks(name, cell)[:2]):
            draw.text((x + cell // 2, 2 + LINE_H * i), line, "black", _font(), anchor="ma")
    for r, (label, pictures) in enumerate(zip(row_labels, rows, strict=True)):
        y = HEADER_H + r * (cell + PAD) + PAD
        for i, line in enumerate(wrap(label, LABEL_W - 2 * PAD)[: cell // LINE_H]):
            draw.text((PAD, y + LINE_H * i), line, "black", _font())
        for c, picture in enumerate(pictures):
            if picture is None:
                continue
            thumb = thumbnail(picture, cell)
            x = LABEL_W + c * (cell + PAD) + PAD
            img.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
    return png_bytes(img)


def image_markdown(png: bytes, alt: str, source: Path | None = None) -> str:
    """The picture inline (`small_picture`), and the full-size file's path when given."""
    mime, data = small_picture(png)
    uri = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    return f"![{alt}]({uri})" + (f"\n\nfull size: `{source}`" if source else "")


def small_picture(png: bytes) -> tuple[str, bytes]:
    """`png` itself when it is at most `PICTURE_BYTES` and `PICTURE_SIDE`; else a JPEG
    (quality 85) scaled down until it fits in `PICTURE_BYTES`. Returns (MIME type, bytes)."""
    img = Image.open(io.BytesIO(png))
    if len(png) <= PICTURE_BYTES and max(img.size) <= PICTURE_SIDE:
        return "image/png", png
    img = img.convert("RGB")
    scale = min(1.0, PICTURE_SIDE / max(img.size))
    while True:
        data = _jpeg(img, scale)
        if len(data) <= PICTURE_BYTES or scale < 0.05:
            return "image/jpeg", data
        scale *= 0.9 * math.sqrt(PICTURE_BYTES / len(data))  # bytes grow with the area


def _jpeg(img: Image.Image, scale: float) -> bytes:
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    small = img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def scores_table(summaries: Sequence[Summary]) -> list[dict]:
    """One row per checkpoint: its step, each metric's value (None when skipped) and the
    skipped metrics with their reasons."""
    rows = []
    for s in summaries:
        row: dict = {"checkpoint": s.label, "step": s.step}
        for name in METRICS:
            m = s.metric(name)
            row[name] = m.value if m is not None and m.status == "ok" else None
        row["skipped"] = "; ".join(f"{m.name}: {m.reason}" for m in s.metrics
                                   if m.status == "skipped")  # fmt: skip
        rows.append(row)
    return rows


def trend_table(summaries: Sequence[Summary]) -> list[dict]:
    """One row per metric scored on any checkpoint: its value on each checkpoint (in step
    order) and the change from the first to the last scored one; with EMA checkpoints
    (`-ema`), the raw ones' change and the EMA's (`change_ema`, from the base when there)."""
    ordered = sorted(summaries, key=_order)
    rows = []
    for name in METRICS:
        values = {s.label: _value(s, name) for s in ordered}
        if all(v is None for v in values.values()):
            continue
        better = "lower" if name in LOWER_IS_BETTER else "higher"
        row = {"metric": name, "better": better, **values}
        row["change"] = _change(values, ema=False)
        if any(is_ema(label) for label in values):
            row["change_ema"] = _change(values, ema=True)
        rows.append(row)
    return rows


def _change(values: dict[str, float | None], ema: bool) -> float | None:
    """Last minus first scored value of one series (the base starts both)."""
    scored = [v for k, v in values.items()
              if v is not None and (k == "base" or is_ema(k) == ema)]  # fmt: skip
    return scored[-1] - scored[0] if len(scored) > 1 else None


def is_ema(label: str) -> bool:
    """A checkpoint of the EMA's weights (`step-NNNNNN-ema`, `final-ema`)."""
    return label.endswith("-ema")


def _value(s: Summary, name: str) -> float | None:
    m = s.metric(name)
    return m.value if m is not None and m.status == "ok" else None


def _order(s: Summary) -> tuple[float, int, str]:
    """Base first, checkpoints by step (a final after the checkpoint of its step), a final
    without a known step last; each EMA right after its raw checkpoint."""
    return (math.inf if s.step is None else s.step, s.label.startswith("final"), s.label)


def ordered(summaries: Sequence[Summary]) -> list[Summary]:
    return sorted(summaries, key=_order)


def trend_png(summaries: Sequence[Summary]) -> bytes:
    """One small line chart per scored metric (value against checkpoint), side by side,
    two per row; the EMA's checkpoints as a second line (orange) over the same steps."""
    ordered = sorted(summaries, key=_order)
    names = [n for n in METRICS if any(_value(s, n) is not None for s in ordered)]
    cols = max(1, min(2, len(names)))
    nrows = max(1, math.ceil(len(names) / cols))
    img = Image.new("RGB", (PANEL[0] * cols, PANEL[1] * nrows), "white")
    if not names:
        ImageDraw.Draw(img).text((8, 8), "no score to plot", "black", _font())
    for i, name in enumerate(names):
        _panel(img, (i % cols) * PANEL[0], (i // cols) * PANEL[1], name, ordered)
    return png_bytes(img)


def _panel(img: Image.Image, x0: int, y0: int, name: str, ordered: Sequence[Summary]) -> None:
    draw = ImageDraw.Draw(img)
    better = "lower" if name in LOWER_IS_BETTER else "higher"
    draw.text((x0 + 8, y0 + 4), f"{name} ({better} is better)", "black", _font())
    left, top, right, bottom = x0 + 48, y0 + 22, x0 + PANEL[0] - 12, y0 + PANEL[1] - 30
    draw.line([(left, top), (left, bottom), (right, bottom)], "black")
    steps = {s.label.removesuffix("-ema"): s.step for s in ordered}  # an EMA shares its slot
    slots = list(steps)
    values = [v for s in ordered if (v := _value(s, name)) is not None]
    lo, hi = min(values), max(values)
    span = hi - lo or abs(hi) or 1.0
    slot = (right - left) / max(1, len(slots))

    def xy(label: str, v: float) -> tuple[float, float]:
        i = slots.index(label.removesuffix("-ema"))
        return left + slot * (i + 0.5), bottom - 6 - (v - lo) / span * (bottom - top - 12)

    draw.text((left - 4, top), _fmt(hi), "black", _font(), anchor="ra")
    draw.text((left - 4, bottom - 6), _fmt(lo), "black", _font(), anchor="rs")
    with_ema = any(is_ema(s.label) for s in ordered)
    for ema, color in ((True, EMA_LINE), (False, LINE))[not with_ema :]:  # the base in both
        series = [s for s in ordered if is_ema(s.label) == ema or s.label == "base"]
        drawn = [xy(s.label, v) for s in series if (v := _value(s, name)) is not None]
        if len(drawn) > 1:
            draw.line(drawn, color, width=2)
        for px, py in drawn:
            draw.ellipse([(px - 3, py - 3), (px + 3, py + 3)], fill=color)
    if with_ema:
        draw.text((right, y0 + 4), "EMA", EMA_LINE, _font(), anchor="ra")
        draw.text((right - 30, y0 + 4), "raw", LINE, _font(), anchor="ra")
    for i, (label, step) in enumerate(steps.items()):
        text = str(step) if label.startswith("step-") else label
        draw.text((left + slot * (i + 0.5), bottom + 4), _cut(text, int(slot)), "black",
                  _font(), anchor="ma")  # fmt: skip


def table_markdown(rows: Sequence[dict]) -> str:
    """A markdown table of dict rows (the union of their keys, in first-seen order)."""
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(k)) for k in keys] for row in rows]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return _fmt(value)
    return "-" if value is None else str(value).replace("|", "\\|")


def grid_markdown(png: bytes, summary: Summary, source: Path | None = None) -> str:
    """A checkpoint's sample grid and its scores, for a markdown artifact."""
    picture = image_markdown(png, f"{summary.label} samples", source)
    return "\n".join([f"### {summary.label}", "", picture, "",
                      table_markdown(scores_table([summary])), ""])  # fmt: skip


def trend_markdown(png: bytes, summaries: Sequence[Summary], source: Path | None = None) -> str:
    """The trend chart and table across a run's checkpoints, for a markdown artifact."""
    picture = image_markdown(png, "score trend", source)
    return "\n".join(["### scores across checkpoints", "", picture, "",
                      table_markdown(trend_table(summaries)), ""])  # fmt: skip


@dataclass(frozen=True)
class Report:
    """What a flow shows: markdown with the pictures (grid per checkpoint, comparison,
    trend) and the tables (`create_table_artifact` rows)."""

    grids: dict[str, str]  # label -> markdown with the sample grid and its scores
    comparison: str
    scores: list[dict]
    trend: list[dict]
    trend_chart: str  # markdown: the line chart and the trend table


def read_summaries(run_dir: Path) -> list[Summary]:
    """The comparable checkpoints' scores of the last stage run, in step order."""
    path = Path(run_dir) / STAGE / "scores.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist: run the evaluate stage first")
    return [Summary.from_dict(d) for d in json.loads(path.read_text())]


def build_report(run_dir: Path) -> Report:
    """The UI's view of a finished evaluate stage."""
    out = Path(run_dir) / STAGE
    summaries = read_summaries(run_dir)
    grids = {}
    for s in summaries:
        grid = out / s.label / "grid.png"
        grids[s.label] = grid_markdown(grid.read_bytes(), s, grid)
    side_by_side = image_markdown((out / "comparison.png").read_bytes(), "checkpoints",
                                  out / "comparison.png")  # fmt: skip
    comparison = "\n".join(["### checkpoints side by side (first seed)", "", side_by_side])
    trend_md = trend_markdown((out / "trend.png").read_bytes(), summaries, out / "trend.png")
    return Report(grids, comparison, scores_table(summaries),
                  trend_table(summaries), trend_md)  # fmt: skip
