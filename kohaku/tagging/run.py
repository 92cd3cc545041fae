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
    "id", "caption", *captions.GROUPS, "quality", "rating_tags", "date",
]  # fmt: skip


def _sample_manifest(run_dir: Path) -> Manifest:
    sample = read_manifest(Path(run_dir) / "sample")
    if sample is None:
        raise InputError(
            f"{Path(run_dir) / 'sample'} has no finished sample stage: run `kohaku sample` first"
        )
    return sample


def run_tag(cfg: TagConfig, run_dir: Path, batch_posts: int = 1_000_000) -> Manifest:
    """Build captions for the sampled posts; reuse `<run_dir>/tag/` when up to date.

    Posts are processed in id-ordered batches of `batch_posts` (memory stays bounded
    on the full danbooru2023); the batch size does not change the output."""
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
            counts = write_captions(cfg, run_dir / "sample", sample, build.dir, batch_posts)
        return write_manifest(
            build, stage_version=TAG_VERSION, config_hash=chash, inputs=inputs,
            outputs=OUTPUTS, counts=counts, versions=library_versions("polars"),
        )  # fmt: skip


def write_captions(
    cfg: TagConfig, sample_dir: Path, sample: Manifest, out_dir: Path, batch_posts: int
) -> dict:
    """Write `captions.parquet` batch by batch; returns the manifest counts."""
    ids = pl.read_parquet(sample_dir / sample.outputs["posts"], columns=["id"])["id"]
    bounds = [(int(ids[i]), int(ids[min(i + batch_posts, len(ids)) - 1]))
              for i in range(0, len(ids), batch_posts)]  # fmt: skip
    out = out_dir / OUTPUTS["captions"]
    parts, counts = [], []
    for i, id_range in enumerate(bounds):
        frame = build_captions(cfg, sample_dir, sample, id_range).collect()
        parts.append(out if len(bounds) == 1 else out_dir / f".part-{i:05d}.parquet")
        frame.write_parquet(parts[-1], compression="zstd", compression_level=1)
        counts.append(caption_counts(frame))
        log.info("tag: batch %d/%d, %d captions", i + 1, len(bounds), frame.height)
    if len(parts) > 1:  # stream the parts into one file
        pl.scan_parquet(parts).sink_parquet(out, compression="zstd", compression_level=1)
        for part in parts:
            part.unlink()
    if not parts:  # no posts: an empty table with the right columns
        build_captions(cfg, sample_dir, sample, None).collect().write_parquet(out)
    return merge_counts(counts)


def build_captions(
    cfg: TagConfig, sample_dir: Path, sample: Manifest, id_range: tuple[int, int] | None = None
) -> pl.LazyFrame:
    """The tag stage as one lazy query over the sample stage's files (posts with
    lo <= id <= hi when `id_range` is given)."""
    files = {k: sample_dir / v for k, v in sample.outputs.items()}
    posts = pl.scan_parquet(files["posts"]).select(
        "id", "created_at", "year", pl.col("rating").cast(pl.Int32), "fav_count"
    )
    post_tags = pl.scan_parquet(files["post_tags"])
    if id_range is not None:
        posts = posts.filter(pl.col("id").is_between(*id_range))
        post_tags = post_tags.filter(pl.col("post_id").is_between(*id_range))
    dictionary = captions.tag_dictionary(pl.read_parquet(files["tags"]), cfg)
    grouped = captions.group_tags(post_tags, dictionary, cfg.tag_order)
    empty = pl.lit([], pl.List(pl.String))
    df = posts.join(grouped, on="id", how="left", maintain_order="left").with_columns(
        *[pl.col(g).fill_null(empty) for g in captions.GROUPS],
        rating_tags=captions.rating_tags_expr(cfg), date=captions.date_tag_expr(cfg),
    )  # fmt: skip
    df = _with_quality(df, cfg, files["fav_hist"], sample)
    df = df.with_columns(caption=captions.caption_expr(cfg.layout))
    return df.select(CAPTION_COLUMNS)  # posts are sorted by id


def _with_quality(
    df: pl.LazyFrame, cfg: TagConfig, fav_hist: Path, sample: Manifest
) -> pl.LazyFrame:
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
    """Counts of one batch: captions, posts without tags, tags, quality histogram."""
    n_post_tags = sum(frame[g].list.len() for g in captions.GROUPS)
    n_special = (
        frame["quality"].is_not_null().cast(pl.Int64)
        + frame["date"].is_not_null().cast(pl.Int64)
        + frame["rating_tags"].list.len()
    )
    n_tags = n_post_tags + n_special
    return {
        "captions": frame.height,
        "without_tags": int((n_post_tags == 0).sum()),
        "tags": int(n_tags.sum() or 0),
        "quality": dict(frame.group_by("quality").len().iter_rows()),
    }


def merge_counts(batches: list[dict]) -> dict:
    """Manifest counts summed over batches."""
    quality_hist: dict[str, int] = {}
    for b in batches:
        for k, v in b["quality"].items():
            quality_hist[str(k)] = quality_hist.get(str(k), 0) + v
    captions_n = sum(b["captions"] for b in batches)
    tags_n = sum(b["tags"] for b in batches)
    return {
        "captions": captions_n,
        "without_tags": sum(b["without_tags"] for b in batches),
        "quality": dict(sorted(quality_hist.items())),
        "mean_tags": round(tags_n / captions_n, 2) if captions_n else 0.0,
    }
