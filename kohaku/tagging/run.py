"""Run the tag stage.

Reads `<run>/sample/` (posts, post_tags, tags, fav_hist parquet and its manifest).
Writes `<run>/tag/captions.parquet` (id, caption, the tag groups, and the layout's
head/body/tail lists the trainer shuffles and drops per step) and `manifest.json`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from kohaku.errors import InputError
from kohaku.stage import (
    Manifest,
    build_stage,
    config_hash,
    library_versions,
    read_manifest,
    write_manifest,
)
from kohaku.tagging import captions, quality
from kohaku.tagging.config import TagConfig

log = logging.getLogger(__name__)
TAG_VERSION = "1"
STAGE = "tag"
OUTPUTS = {"captions": "captions.parquet"}
CAPTION_COLUMNS = [
    "id", "caption", "head", "body", "tail", *captions.GROUPS, "quality", "rating_tags", "date",
]  # fmt: skip


def _sample_manifest(run_dir: Path) -> Manifest:
    sample = read_manifest(Path(run_dir) / "sample")
    if sample is None:
        raise InputError(f"{Path(run_dir) / 'sample'} has no finished sample stage: run "
                         "`kohaku sample` first")
    return sample


def run_tag(cfg: TagConfig, run_dir: Path) -> Manifest:
    """Build captions for the sampled posts; reuse `<run_dir>/tag/` when up to date."""
    run_dir = Path(run_dir)
    sample = _sample_manifest(run_dir)
    inputs = {"sample": {"config_hash": sample.config_hash, "created_at": sample.created_at}}
    chash = config_hash(cfg)
    done = read_manifest(run_dir / STAGE)
    if done and (done.config_hash, done.inputs, done.stage_version) == (chash, inputs, TAG_VERSION):
        log.info("tag: up to date in %s", run_dir / STAGE)
        return done
    with build_stage(run_dir, STAGE) as build:
        with build.timed("captions"):
            frame = build_captions(cfg, run_dir / "sample", sample).collect()
        with build.timed("write"):
            frame.write_parquet(build.dir / OUTPUTS["captions"])
        counts = caption_counts(frame)
        return write_manifest(
            build, stage_version=TAG_VERSION, config_hash=chash, inputs=inputs,
            outputs=OUTPUTS, counts=counts, versions=library_versions("polars"),
        )  # fmt: skip


def build_captions(cfg: TagConfig, sample_dir: Path, sample: Manifest) -> pl.LazyFrame:
    """The whole tag stage as one lazy query over the sample stage's files."""
    files = {k: sample_dir / v for k, v in sample.outputs.items()}
    posts = pl.scan_parquet(files["posts"]).select(
        "id", "created_at", "year", pl.col("rating").cast(pl.Int32), "fav_count"
    )
    dictionary = captions.tag_dictionary(pl.read_parquet(files["tags"]), cfg)
    grouped = captions.group_tags(pl.scan_parquet(files["post_tags"]), dictionary, cfg.tag_order)
    df = posts.join(grouped, on="id", how="left", maintain_order="left").with_columns(
        rating_tags=captions.rating_tags_expr(cfg), date=captions.date_tag_expr(cfg)
    )
    df = _with_quality(df, cfg, files["fav_hist"], sample)
    return captions.lay_out(df, cfg.layout).select(CAPTION_COLUMNS)  # posts are sorted by id


def _with_quality(df: pl.LazyFrame, cfg: TagConfig, fav_hist: Path, sample: Manifest) -> pl.LazyFrame:
    q = cfg.quality
    if not q.enabled:
        return df.with_columns(quality=pl.lit(None, pl.String))
    if q.table is not None:
        thresholds = quality.thresholds_from_table(q.table, len(q.percentiles))
    else:
        thresholds = quality.thresholds_from_hist(pl.read_parquet(fav_hist), q.percentiles)
    return quality.add_quality(df, thresholds.lazy(), q.tags, _quality_eligible(cfg, sample))


def _quality_eligible(cfg: TagConfig, sample: Manifest) -> pl.Expr:
    """Posts too young to have collected their favourites get no quality tag."""
    q, ok = cfg.quality, pl.lit(True)
    if q.max_post_id is not None:
        ok = ok & (pl.col("id") <= q.max_post_id)
    snapshot = sample.counts.get("metadata_snapshot_at")
    if q.min_age_days is not None and snapshot:
        cutoff = datetime.fromisoformat(snapshot) - timedelta(days=q.min_age_days)
        ok = ok & (pl.col("created_at") <= cutoff)
    return ok


def caption_counts(frame: pl.DataFrame) -> dict:
    """Counts for the manifest: captions, posts without tags, quality tag histogram."""
    hist = frame.group_by("quality").len().sort("quality", nulls_last=True)
    return {
        "captions": frame.height,
        "without_tags": frame.filter(pl.col("body").list.len() + pl.col("head").list.len() == 0).height,
        "quality": {str(k): v for k, v in hist.iter_rows()},
        "mean_tags": round(float((frame["head"].list.len() + frame["body"].list.len()
                                  + frame["tail"].list.len()).mean() or 0), 2),
    }
