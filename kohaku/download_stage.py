"""The download stage: the sampled posts, shard by shard, into images and ledgers.

Reads `<run>/sample/posts.parquet` (and its manifest). Writes into `<run>/download/`:
`images/...` (each file atomic), `ledgers/shard-NNNNN.parquet` (one per shard, atomic,
one row per post of the shard) and, last, `manifest.json` with the counts. Unlike the
data stages it writes in place, not through a partial folder: a killed run keeps every
finished image and shard ledger, and the rerun retries only failed or missing posts.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import polars as pl

from kohaku.download import LEDGER_SCHEMA, DownloadConfig, download_shard
from kohaku.errors import InputError
from kohaku.stage import (
    MANIFEST,
    Manifest,
    atomic_write_bytes,
    atomic_write_text,
    config_hash,
    library_versions,
    read_manifest,
)

log = logging.getLogger(__name__)
DOWNLOAD_VERSION = "1"
STAGE = "download"
POST_COLUMNS = ["id", "md5", "file_ext", "file_url"]


def shard_count(run_dir: Path, shard_size: int) -> int:
    posts = _posts_file(Path(run_dir))
    n = pl.scan_parquet(posts).select(pl.len()).collect().item()
    return -(-n // shard_size)


def ledger_path(run_dir: Path, shard: int) -> Path:
    return Path(run_dir) / STAGE / "ledgers" / f"shard-{shard:05d}.parquet"


def run_download_shard(cfg: DownloadConfig, run_dir: Path, shard: int, shard_size: int) -> dict:
    """Download one shard (posts [shard*size, (shard+1)*size) in id order); returns its
    counts. Posts already done by an earlier run are kept."""
    run_dir = Path(run_dir)
    posts = pl.scan_parquet(_posts_file(run_dir)).select(POST_COLUMNS)
    posts = posts.slice(shard * shard_size, shard_size).collect()
    path = ledger_path(run_dir, shard)
    previous = pl.read_parquet(path) if path.is_file() else None
    ledger = download_shard(posts, cfg, run_dir / STAGE, previous)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    ledger.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())
    return ledger_counts(ledger)


def run_download(cfg: DownloadConfig, run_dir: Path, shard_size: int = 2000) -> Manifest:
    """All shards one after the other (Prefect runs them as parallel tasks instead),
    then the manifest."""
    start = time.perf_counter()
    for shard in range(shard_count(run_dir, shard_size)):
        counts = run_download_shard(cfg, run_dir, shard, shard_size)
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
    )
    manifest = Manifest(
        stage=STAGE, stage_version=DOWNLOAD_VERSION, config_hash=config_hash(cfg),
        inputs={"sample": {"config_hash": sample.config_hash, "created_at": sample.created_at}},
        outputs={"ledgers": "ledgers/", "images": "images/"}, counts=counts,
        timings={"total": round(seconds, 3)}, versions=library_versions("pillow", "httpx"),
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
        "top_errors": {str(e): n for e, n in errors.iter_rows()},
    }


def _posts_file(run_dir: Path) -> Path:
    sample = read_manifest(run_dir / "sample")
    if sample is None:
        raise InputError(f"{run_dir / 'sample'} has no finished sample stage: run it first")
    return run_dir / "sample" / sample.outputs["posts"]
