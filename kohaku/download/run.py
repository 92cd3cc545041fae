"""The download stage: the sampled posts, shard by shard, into images and ledgers.

Reads `<run>/sample/posts.parquet` (and its manifest), `<run>/tag/captions.parquet` when
caption sidecars are asked for, and the image source: HTTP, or a local folder / tar
shards indexed once into `<run>/download/source-index.parquet`. Writes into
`<run>/download/`: `images/...` (each file atomic), `ledgers/shard-NNNNN.parquet` (one per
shard, atomic, one row per post of the shard; while a shard runs, its finished posts go to
`shard-NNNNN.journal.jsonl`) and, last, `manifest.json` with the counts. Unlike the data
stages it writes in place, not through a partial folder: a killed run keeps every finished
image, journal line and shard ledger, and the rerun retries only failed or missing posts.
The temporary files a killed run was writing (`.<name>.<hex>.tmp-<pid>`) are removed when
the stage starts again and counted in `stale-temps.json`, then in the manifest.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
from tqdm import tqdm

from kohaku.download.shard import (
    LEDGER_SCHEMA,
    DownloadConfig,
    download_shard,
    merge_previous,
    read_journal,
)
from kohaku.download.sources import build_index, choose, source_files
from kohaku.errors import InputError
from kohaku.stage import (
    MANIFEST,
    Manifest,
    atomic_write_bytes,
    atomic_write_text,
    config_hash,
    library_versions,
    pid_alive,
    read_manifest,
)

log = logging.getLogger(__name__)
DOWNLOAD_VERSION = "2"
STAGE = "download"
POST_COLUMNS = ["id", "md5", "file_ext", "file_url"]
INDEX = "source-index.parquet"
STALE = "stale-temps.json"
# kohaku.stage.temp_name: `.<name>.<8 hex digits>.tmp-<writer pid>`; nothing else is removed
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp-(\d+)")


def shard_count(run_dir: Path, shard_size: int) -> int:
    return -(-post_count(run_dir) // shard_size)


def post_count(run_dir: Path) -> int:
    posts = _posts_file(Path(run_dir))
    return pl.scan_parquet(posts).select(pl.len()).collect().item()


def ledger_path(run_dir: Path, shard: int) -> Path:
    return Path(run_dir) / STAGE / "ledgers" / f"shard-{shard:05d}.parquet"


def shard_clean(run_dir: Path, shard: int) -> bool:
    """Whether the shard's ledger exists and holds no failed post (nothing to redo)."""
    path = ledger_path(run_dir, shard)
    status = pl.read_parquet(path, columns=["status"])["status"] if path.is_file() else None
    return status is not None and not status.eq("failed").any()


def journal_path(run_dir: Path, shard: int) -> Path:
    return ledger_path(run_dir, shard).with_suffix(".journal.jsonl")


def check_inputs(cfg: DownloadConfig, run_dir: Path) -> None:
    """Fail before any work when an input the config names is missing."""
    run_dir = Path(run_dir)
    _posts_file(run_dir)
    if cfg.source != "http" and not Path(cfg.source_path).is_dir():
        raise InputError(f"download.source_path {cfg.source_path} is not a folder")
    if cfg.source == "tar" and not source_files("tar", cfg.source_path):
        raise InputError(f"download.source_path {cfg.source_path} has no .tar shards")
    if cfg.sidecars and read_manifest(run_dir / "tag") is None:
        raise InputError("download.sidecars needs the captions: run the tag stage first")


# the fields that change what a post's file is; the others (fetch policy, url_template,
# threads, sidecars) change how it is fetched or what sits beside it
OUTPUT_FIELDS = {"source", "source_path", "verify_md5", "max_pixels", "jpeg_draft",
                 "resize_library", "image_format", "quality", "background", "buckets"}  # fmt: skip


def reset_if_changed(cfg: DownloadConfig, run_dir: Path) -> bool:
    """Shard ledgers written for another sample or with other output fields are not
    resumed: they and the manifest are removed so every shard starts over (images are
    rewritten in place). `download/resume.json` records what the ledgers were made for;
    a folder without it is adopted as it is. Returns whether anything was reset."""
    stage, sample = Path(run_dir) / STAGE, read_manifest(Path(run_dir) / "sample")
    posts = [sample.config_hash, sample.inputs]  # the same config and inputs: the same posts
    output = cfg.model_dump(mode="json", include=OUTPUT_FIELDS)
    stamp = json.dumps({"output": output, "sample": posts}, sort_keys=True, default=str)
    path = stage / "resume.json"
    reset = path.is_file() and path.read_text() != stamp
    if reset:
        log.info("download: config or sample changed since the ledgers were written; starting over")
        shutil.rmtree(stage / "ledgers", ignore_errors=True)
        (stage / MANIFEST).unlink(missing_ok=True)
        (stage / STALE).unlink(missing_ok=True)
    stage.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, stamp)
    return reset


def prepare_source(cfg: DownloadConfig, run_dir: Path) -> int:
    """Reset ledgers made for another config or sample; index a local source once per
    stage run (tar indexes are kept while the tar files are unchanged); returns the number
    of image files found. HTTP needs nothing."""
    check_inputs(cfg, run_dir)
    reset_if_changed(cfg, run_dir)
    remove_stale_temps(run_dir)
    if cfg.source == "http":
        return 0
    out = Path(run_dir) / STAGE / INDEX
    stamp = _source_stamp(cfg)
    stamp_file = out.with_suffix(".json")
    fresh = out.is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp
    if cfg.source == "tar" and fresh:  # a folder is walked again: files may have come
        return pl.scan_parquet(out).select(pl.len()).collect().item()
    index = build_index(cfg.source, Path(cfg.source_path))
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    index.write_parquet(buf)
    atomic_write_bytes(out, buf.getvalue())
    atomic_write_text(stamp_file, json.dumps(stamp))
    log.info("download: indexed %d files in %s", index.height, cfg.source_path)
    return index.height


def remove_stale_temps(run_dir: Path) -> int:
    """Remove the temporary files that killed writers left in the stage folder (images,
    sidecars, ledgers, manifests: every file is written to a temp name, then renamed) and
    add their number to `stale-temps.json`; returns it. Only names of kohaku.stage's
    temp pattern whose writer is no longer running go: a live writer's temps and every
    other file stay."""
    stage = Path(run_dir) / STAGE
    images = stage / "images"
    folders = [stage, stage / "ledgers"]
    folders += sorted(p for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    removed = 0
    for folder in folders:
        for path in folder.glob(".*.tmp-*"):
            match = TEMP_NAME.fullmatch(path.name)
            if match and path.is_file() and not pid_alive(int(match[1])):
                path.unlink(missing_ok=True)
                removed += 1
    if removed:
        log.info("download: removed %d temporary files left by a killed run", removed)
        total = stale_temps_removed(run_dir) + removed
        atomic_write_text(stage / STALE, json.dumps({"stale_temp_removed": total}))
    return removed


def stale_temps_removed(run_dir: Path) -> int:
    """Temp files of killed runs removed since the ledgers were started."""
    path = Path(run_dir) / STAGE / STALE
    return json.loads(path.read_text())["stale_temp_removed"] if path.is_file() else 0


def _source_stamp(cfg: DownloadConfig) -> dict:
    files = source_files(cfg.source, Path(cfg.source_path))
    return {
        "kind": cfg.source, "path": str(Path(cfg.source_path).resolve()),
        "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }  # fmt: skip


def shard_posts(cfg: DownloadConfig, run_dir: Path, shard: int, shard_size: int) -> pl.DataFrame:
    """The shard's posts in id order, with what its source needs (index entry, caption)."""
    run_dir = Path(run_dir)
    posts = pl.scan_parquet(_posts_file(run_dir)).select(POST_COLUMNS)
    posts = posts.slice(shard * shard_size, shard_size).collect()
    if cfg.source != "http":
        index_file = run_dir / STAGE / INDEX
        if not index_file.is_file():
            prepare_source(cfg, run_dir)
        index = pl.scan_parquet(index_file).filter(pl.col("id").is_in(posts["id"].implode()))
        posts = posts.join(choose(index.collect(), posts), on="id", how="left")
    if cfg.sidecars:
        posts = posts.join(_captions(run_dir, posts["id"]), on="id", how="left")
    return posts


def _captions(run_dir: Path, ids: pl.Series) -> pl.DataFrame:
    tag = read_manifest(run_dir / "tag")
    if tag is None:
        raise InputError("download.sidecars needs the captions: run the tag stage first")
    scan = pl.scan_parquet(run_dir / "tag" / tag.outputs["captions"])
    return scan.select("id", "caption").filter(pl.col("id").is_in(ids.implode())).collect()


def run_download_shard(
    cfg: DownloadConfig,
    run_dir: Path,
    shard: int,
    shard_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Download one shard (posts [shard*size, (shard+1)*size) in id order); returns its
    counts. Posts done by an earlier run, finished or killed, are kept."""
    run_dir = Path(run_dir)
    posts = shard_posts(cfg, run_dir, shard, shard_size)
    path, journal = ledger_path(run_dir, shard), journal_path(run_dir, shard)
    previous = merge_previous(pl.read_parquet(path) if path.is_file() else None,
                              read_journal(journal))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = download_shard(posts, cfg, run_dir / STAGE, previous, journal=journal,
                            progress=progress)  # fmt: skip
    buf = io.BytesIO()
    ledger.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())
    journal.unlink(missing_ok=True)  # the ledger now holds every row
    return ledger_counts(ledger)


def run_download(cfg: DownloadConfig, run_dir: Path, shard_size: int = 2000,
                 show_progress: bool | None = None) -> Manifest:  # fmt: skip
    """All shards one after the other (Prefect runs them as parallel tasks instead),
    then the manifest. A progress bar shows on a terminal (`show_progress=None`)."""
    start = time.perf_counter()
    prepare_source(cfg, run_dir)
    bar = tqdm(total=post_count(run_dir), unit="img", desc="download",
               disable=None if show_progress is None else not show_progress)  # fmt: skip
    with bar:
        for shard in range(shard_count(run_dir, shard_size)):
            counts = run_download_shard(cfg, run_dir, shard, shard_size, bar.update)
            log.info("download: shard %d: %s", shard, counts)
    return write_download_manifest(cfg, run_dir, shard_size, time.perf_counter() - start)


def write_download_manifest(
    cfg: DownloadConfig, run_dir: Path, shard_size: int, seconds: float
) -> Manifest:
    """Summarise every shard ledger; the manifest marks the stage done (written last)."""
    run_dir = Path(run_dir)
    sample = read_manifest(run_dir / "sample")
    ledgers = [ledger_path(run_dir, i) for i in range(shard_count(run_dir, shard_size))]
    missing = [p.name for p in ledgers if not p.is_file()]
    if missing:
        raise InputError(f"shards without a ledger: {missing[:5]}; rerun the download stage")
    counts = ledger_counts(
        pl.read_parquet(ledgers) if ledgers else pl.DataFrame(schema=LEDGER_SCHEMA)
    ) | {"stale_temp_removed": stale_temps_removed(run_dir)}
    manifest = Manifest(
        stage=STAGE, stage_version=DOWNLOAD_VERSION, config_hash=config_hash(cfg),
        inputs={
            "sample": {"config_hash": sample.config_hash, "created_at": sample.created_at},
            "source": {"kind": cfg.source, "path": str(cfg.source_path or "")},
        },
        outputs={"ledgers": "ledgers/", "images": "images/"}, counts=counts,
        timings={"total": round(seconds, 3)},
        versions=library_versions("pillow", "pyvips", "pyvips-binary", "httpx"),
        created_at=time.time(),
    )  # fmt: skip
    atomic_write_text(run_dir / STAGE / MANIFEST, manifest.model_dump_json(indent=2))
    return manifest


def ledger_counts(ledger: pl.DataFrame) -> dict:
    """Posts per status, bytes fetched, and the most common errors."""
    errors = (
        ledger.filter(pl.col("status") == "failed")
        .group_by(pl.col("error").str.slice(0, 80)).len().sort("len", descending=True).head(10)
    )  # fmt: skip
    return {
        "posts": ledger.height,
        "ok": int((ledger["status"] == "ok").sum()),
        "failed": int((ledger["status"] == "failed").sum()),
        "bytes": int(ledger["bytes"].sum() or 0),
        "md5_checked": int(ledger["md5_checked"].sum() or 0),
        "top_errors": {str(e): n for e, n in errors.iter_rows()},
    }


def _posts_file(run_dir: Path) -> Path:
    sample = read_manifest(run_dir / "sample")
    if sample is None:
        raise InputError(f"{run_dir / 'sample'} has no finished sample stage: run it first")
    return run_dir / "sample" / sample.outputs["posts"]
