"""Run the tag stage.

Reads `<run>/sample/` (posts, post_tags, tags, fav_hist parquet and its manifest) and, when
`tag.text_captions` names one, a natural-language caption file (`kohaku.tag.texts`).
Writes `<run>/tag/captions.parquet` (id, caption, the tag groups, from which `lay_out`
derives the head/body/tail lists the trainer shuffles and drops per step, and `text`: the
post's natural-language caption or null) and `manifest.json` (with, when a text file is
given, how many posts have a text and how many fall back to tags alone).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from kohaku.errors import InputError
from kohaku.stage import (
    Manifest,
    build_stage,
    config_hash,
    fingerprint,
    library_versions,
    read_manifest,
    reusable,
    write_manifest,
)
from kohaku.tag import captions, quality
from kohaku.tag.config import TagConfig
from kohaku.tag.texts import TextSource, join_texts, open_text_source

log = logging.getLogger(__name__)
TAG_VERSION = "2"  # 2: captions.parquet has a `text` column (issue 14)
STAGE = "tag"
OUTPUTS = {"captions": "captions.parquet"}
CAPTION_COLUMNS = [
    "id", "caption", *captions.GROUPS, "quality", "rating_tags", "date", "text",
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
    texts = None
    if cfg.text_captions is not None:  # checked before anything is built or reused
        texts = open_text_source(cfg.text_captions)
        inputs["text_captions"] = fingerprint(texts.path).model_dump()
    chash = config_hash(cfg)
    if done := reusable(run_dir / STAGE, chash, inputs, TAG_VERSION):
        log.info("tag: up to date in %s", run_dir / STAGE)
        return done
    with build_stage(run_dir, STAGE) as build:
        with build.timed("captions"):
            counts = write_captions(cfg, run_dir / "sample", sample, build.dir, batch_posts,
                                    texts)  # fmt: skip
        return write_manifest(
            build, stage_version=TAG_VERSION, config_hash=chash, inputs=inputs,
            outputs=OUTPUTS, counts=counts, versions=library_versions("polars"),
        )  # fmt: skip


def write_captions(
    cfg: TagConfig, sample_dir: Path, sample: Manifest, out_dir: Path, batch_posts: int,
    texts: TextSource | None = None,
) -> dict:  # fmt: skip
    """Write `captions.parquet`; returns the manifest counts. More than `batch_posts`
    posts are computed batch by batch and streamed into the one file (bounded memory,
    no merge pass)."""
    ids = pl.read_parquet(sample_dir / sample.outputs["posts"], columns=["id"])["id"]
    bounds = [(int(ids[i]), int(ids[min(i + batch_posts, len(ids)) - 1]))
              for i in range(0, len(ids), batch_posts)]  # fmt: skip
    out = out_dir / OUTPUTS["captions"]
    shared = prepare(cfg, sample_dir, sample, texts)  # read once, used by every batch
    extra = _threshold_counts(cfg, shared)
    if len(bounds) <= 1:
        query = build_captions(cfg, sample_dir, sample, bounds[0] if bounds else None, shared)
        # one batch: the in-memory engine runs it about twice as fast as the streaming default
        frame = query.collect(engine="in-memory")
        frame.write_parquet(out, compression="zstd", compression_level=1)
        return caption_counts(frame.lazy(), texts) | extra

    # several batches: the streaming engine runs them one after the other into one file
    # and overlaps computing with writing (faster here than in-memory batches)
    batches = [build_captions(cfg, sample_dir, sample, b, shared) for b in bounds]
    log.info("tag: %d posts in %d batches", len(ids), len(bounds))
    pl.concat(batches, parallel=False).sink_parquet(out, compression="zstd", compression_level=1)
    return caption_counts(pl.scan_parquet(out), texts) | extra


def _threshold_counts(cfg: TagConfig, shared: Prepared) -> dict:
    if shared.thresholds is None:
        return {}
    return {"quality_thresholds": quality.report(shared.thresholds, cfg.quality.percentiles)}


@dataclass(frozen=True)
class Prepared:
    """What every batch shares: the tag dictionary, the quality thresholds and the checked
    text file (None: no texts)."""

    dictionary: pl.DataFrame
    thresholds: quality.Thresholds | None
    texts: TextSource | None = None


def prepare(
    cfg: TagConfig, sample_dir: Path, sample: Manifest, texts: TextSource | None = None
) -> Prepared:
    """`texts`: the checked `tag.text_captions` (opened here when the caller has not)."""
    if texts is None and cfg.text_captions is not None:
        texts = open_text_source(cfg.text_captions)
    q = cfg.quality
    thresholds = None
    if q.enabled:
        hist = None
        if q.table is None:
            hist = pl.read_parquet(sample_dir / sample.outputs["fav_hist"])
        snapshot = sample.counts.get("metadata_snapshot_at")
        year = datetime.fromisoformat(snapshot).year if snapshot else None
        thresholds = quality.compute_thresholds(q, hist, year)
    tags = pl.read_parquet(sample_dir / sample.outputs["tags"])
    return Prepared(captions.tag_dictionary(tags, cfg), thresholds, texts)


def build_captions(
    cfg: TagConfig,
    sample_dir: Path,
    sample: Manifest,
    id_range: tuple[int, int] | None = None,
    shared: Prepared | None = None,
) -> pl.LazyFrame:
    """The tag stage as one lazy query over the sample stage's files (posts with
    lo <= id <= hi when `id_range` is given)."""
    shared = shared or prepare(cfg, sample_dir, sample)
    files = {k: sample_dir / v for k, v in sample.outputs.items()}
    posts = pl.scan_parquet(files["posts"]).select(
        "id", "created_at", "year", pl.col("rating").cast(pl.Int32), "fav_count"
    )
    post_tags = pl.scan_parquet(files["post_tags"])
    if id_range is not None:
        posts = posts.filter(pl.col("id").is_between(*id_range))
        post_tags = post_tags.filter(pl.col("post_id").is_between(*id_range))
    if shared.texts is None:  # the default path: no join, an all-null column
        posts = posts.with_columns(text=pl.lit(None, pl.String))
    else:
        posts = join_texts(posts, shared.texts, cfg.escape_brackets, id_range)
    grouped = captions.group_tags(post_tags, shared.dictionary, cfg.tag_order)
    empty = pl.lit([], captions.TAG_LIST)
    df = posts.join(grouped, on="id", how="left", maintain_order="left").with_columns(
        *[pl.col(g).fill_null(empty) for g in captions.GROUPS],
        rating_tags=captions.rating_tags_expr(cfg), date=captions.date_tag_expr(cfg),
    )  # fmt: skip
    if shared.thresholds is None:
        df = df.with_columns(quality=pl.lit(None, pl.String))
    else:
        eligible = _quality_eligible(cfg, sample)
        df = quality.add_quality(df, shared.thresholds, cfg.quality.tags, eligible)
    df = df.with_columns(caption=captions.caption_expr(cfg.layout))
    return df.select(CAPTION_COLUMNS)  # posts are sorted by id


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


def caption_counts(captions_file: pl.LazyFrame, texts: TextSource | None = None) -> dict:
    """Manifest counts: captions, posts without tags, quality histogram, mean tags; with a
    text file, posts with a text and without one (those train on tags alone)."""
    n_post = pl.sum_horizontal([pl.col(g).list.len() for g in captions.GROUPS])
    n_special = (
        pl.col("quality").is_not_null().cast(pl.Int64)
        + pl.col("date").is_not_null().cast(pl.Int64)
        + pl.col("rating_tags").list.len()
    )
    totals = captions_file.select(
        captions=pl.len(), without_tags=(n_post == 0).sum(), tags=(n_post + n_special).sum(),
        with_text=pl.col("text").is_not_null().sum(),
    ).collect()  # fmt: skip
    hist = captions_file.group_by("quality").len().collect()
    n = int(totals["captions"][0])
    counts = {
        "captions": n,
        "without_tags": int(totals["without_tags"][0]),
        "quality": {str(k): v for k, v in sorted(hist.iter_rows(), key=lambda kv: str(kv[0]))},
        "mean_tags": round(int(totals["tags"][0] or 0) / n, 2) if n else 0.0,
    }
    if texts is not None:
        with_text = int(totals["with_text"][0])
        counts["texts"] = {"file": str(texts.path), "file_rows": texts.rows,
                           "with_text": with_text, "without_text": n - with_text}  # fmt: skip
    return counts
