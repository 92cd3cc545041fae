"""Tasks of the image stages: the source check and index, one task per download shard
(its ledger and journal are the resume point, so shards are not cached: a rerun skips the
posts done and retries the failed), the download manifest, and the buckets stage."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from kohaku.buckets_stage import run_buckets
from kohaku.download import DownloadConfig
from kohaku.download_stage import prepare_source, run_download_shard, write_download_manifest
from kohaku.stage import Manifest


@task(name="prepare-source", cache_policy=NO_CACHE)
def prepare_source_task(cfg: DownloadConfig, run_dir: Path) -> int:
    return prepare_source(cfg, run_dir)


@task(name="download-shard", task_run_name="download-shard-{shard}", cache_policy=NO_CACHE,
      retries=2, retry_delay_seconds=10, tags=["cpu", "network"])  # fmt: skip
def download_shard_task(cfg: DownloadConfig, run_dir: Path, shard: int, shard_size: int) -> dict:
    return run_download_shard(cfg, run_dir, shard, shard_size)


@task(name="download-manifest", cache_policy=NO_CACHE)
def download_manifest_task(
    cfg: DownloadConfig, run_dir: Path, shard_size: int, seconds: float
) -> Manifest:
    return write_download_manifest(cfg, run_dir, shard_size, seconds)


@task(name="buckets", cache_policy=NO_CACHE)
def buckets_task(run_dir: Path) -> Manifest:
    """Not cached by Prefect: the stage itself is skipped when its manifest is current."""
    return run_buckets(run_dir)
