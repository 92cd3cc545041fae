"""The buckets stage: the download ledgers, gathered into the training set's image list.

Reads `<run>/download/manifest.json` and `<run>/download/ledgers/shard-*.parquet` (the
download stage already placed every image in its bucket, `kohaku.download.placement.place`). Writes
into `<run>/buckets/`: `manifest.parquet` (one row per downloaded image whose file still
exists, sorted by id: path relative to the run dir, original size, bucket, resized size,
crop), `histogram.png` (images per bucket, a bar chart drawn with Pillow) and, last,
`manifest.json` with the counts and the histogram. `histogram_markdown` embeds the chart
in a markdown report (the Prefect UI renders base64 images inside markdown artifacts).
"""

from __future__ import annotations

import base64
import io
import logging
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict

from kohaku.download import LEDGER_SCHEMA
from kohaku.download import STAGE as DOWNLOAD
from kohaku.errors import InputError
from kohaku.stage import (
    Manifest,
    build_stage,
    config_hash,
    library_versions,
    read_manifest,
    reusable,
    write_manifest,
)

log = logging.getLogger(__name__)
BUCKETS_VERSION = "1"
STAGE = "buckets"
OUTPUTS = {"manifest": "manifest.parquet", "histogram": "histogram.png"}
PLACEMENT_COLUMNS = [
    "orig_w", "orig_h", "bucket_w", "bucket_h", "resized_w", "resized_h", "crop_left", "crop_top",
]  # fmt: skip
PNG_SIZE = (900, 400)


class BucketsConfig(BaseModel):
    """No settings yet: the bucket set and every placement come from the download stage
    (`DownloadConfig.buckets`), whose config hash is among this stage's inputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class Gathered:
    """The images the training set gets (`images`) and the ok posts whose file is gone."""

    images: pl.DataFrame
    missing: int


def run_buckets(run_dir: Path) -> Manifest:
    """Gather the downloaded images into `<run_dir>/buckets/`; reuse it when up to date."""
    run_dir = Path(run_dir)
    download = _download_manifest(run_dir)
    inputs = {"download": {"config_hash": download.config_hash, "created_at": download.created_at}}
    chash = config_hash(BucketsConfig())
    if done := reusable(run_dir / STAGE, chash, inputs, BUCKETS_VERSION):
        log.info("buckets: up to date in %s", run_dir / STAGE)
        return done
    with build_stage(run_dir, STAGE) as build:
        with build.timed("gather"):
            gathered = placements(run_dir, download)
            images, missing = gathered.images, gathered.missing
            images.write_parquet(build.dir / OUTPUTS["manifest"])
        hist = histogram(images)
        with build.timed("histogram"):
            (build.dir / OUTPUTS["histogram"]).write_bytes(histogram_png(hist))
        counts = {"images": images.height, "missing": missing, "buckets": len(hist),
                  "histogram": hist}  # fmt: skip
        log.info("buckets: %d images in %d buckets, %d missing", images.height, len(hist), missing)
        return write_manifest(
            build, stage_version=BUCKETS_VERSION, config_hash=chash, inputs=inputs,
            outputs=OUTPUTS, counts=counts, versions=library_versions("polars", "pillow"),
        )  # fmt: skip


def placements(run_dir: Path, download: Manifest) -> Gathered:
    """The ok rows of every ledger whose file exists, sorted by id, with `path` relative
    to the run dir; and how many ok rows lost their file."""
    ledger_dir = run_dir / DOWNLOAD / download.outputs["ledgers"]
    ledgers = sorted(ledger_dir.glob("shard-*.parquet"))
    scan = pl.scan_parquet(ledgers) if ledgers else pl.LazyFrame(schema=LEDGER_SCHEMA)
    frame = (
        scan.filter(pl.col("status") == "ok")
        .select(
            pl.col("id").cast(pl.Int64),
            (pl.lit(f"{DOWNLOAD}/") + pl.col("path")).alias("path"),
            *[pl.col(c).cast(pl.Int32) for c in PLACEMENT_COLUMNS],
        )
        .collect()
        .sort("id")
    )
    exists = pl.Series([(run_dir / p).is_file() for p in frame["path"]], dtype=pl.Boolean)
    return Gathered(frame.filter(exists), int((~exists).sum()))


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


def _download_manifest(run_dir: Path) -> Manifest:
    download = read_manifest(run_dir / DOWNLOAD)
    if download is None:
        raise InputError(
            f"{run_dir / DOWNLOAD} has no finished download stage: run `kohaku download` first"
        )
    return download
