"""The buckets stage: the download ledgers, gathered into the training set's image list.

Reads `<run>/download/manifest.json` and `<run>/download/ledgers/shard-*.parquet` (the
download stage already placed every image in its bucket, `kohaku.download.placement.place`).
Writes into `<run>/buckets/`: `manifest.parquet` (one row per downloaded image whose file still
exists, sorted by id: path relative to the run dir, original size, bucket, resized size,
crop), `histogram.png` (images per bucket, a bar chart drawn with Pillow) and, last,
`manifest.json` with the counts and the histogram. `histogram_markdown` embeds the chart
in a markdown report (the Prefect UI renders base64 images inside markdown artifacts); the
chart is drawn by `kohaku.buckets.histogram`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kohaku.buckets.config import BucketsConfig
from kohaku.buckets.histogram import histogram, histogram_png
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


def _download_manifest(run_dir: Path) -> Manifest:
    download = read_manifest(run_dir / DOWNLOAD)
    if download is None:
        raise InputError(
            f"{run_dir / DOWNLOAD} has no finished download stage: run `kohaku download` first"
        )
    return download
