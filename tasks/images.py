"""Tasks of the image stages: the source check and index, one task per download shard,
the download manifest, and the buckets stage.

A shard is cached on the download fields that change its files (`output_key`: not the
fetch policy, url or threads), its place (index, size) and the upstream stages; a shard
whose ledger is missing or holds failed posts is executed again, and its ledger and
journal then resume it (the done posts are kept, the failed retried).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from kohaku.buckets.run import BUCKETS_VERSION, run_buckets
from kohaku.download.config import DownloadConfig
from kohaku.download.run import (
    DOWNLOAD_VERSION,
    OUTPUT_FIELDS,
    prepare_source,
    run_download_shard,
    shard_clean,
    write_download_manifest,
)
from kohaku.stage import Manifest
from tasks.policy import for_run, retryable, stage_policy


@task(name="prepare-source", cache_policy=NO_CACHE)
def prepare_source_task(cfg: DownloadConfig, run_dir: Path) -> int:
    """Not cached: a check of the inputs, and a local folder is walked again."""
    return prepare_source(cfg, run_dir)


def output_key(cfg: DownloadConfig) -> dict:
    """The download fields a shard's files depend on (its cache key instead of `cfg`)."""
    return cfg.model_dump(mode="json", include=OUTPUT_FIELDS | {"sidecars"})


@task(name="download-shard", task_run_name="download-shard-{shard}",
      cache_policy=stage_policy("download", DOWNLOAD_VERSION, ignore=("cfg",)),
      persist_result=True, retries=2, retry_delay_seconds=10, retry_condition_fn=retryable,
      tags=["cpu", "network"])  # fmt: skip
def download_shard_task(cfg: DownloadConfig, run_dir: Path, shard: int, shard_size: int,
                        upstream: list[dict], output: dict) -> dict:  # fmt: skip
    return run_download_shard(cfg, run_dir, shard, shard_size)


def shard_task(run_dir: Path, shard: int):
    """The shard task, cached only while its ledger exists and holds no failed post."""
    return for_run(download_shard_task, run_dir, "download", done=shard_clean(run_dir, shard))


@task(name="download-manifest", cache_policy=stage_policy("download", DOWNLOAD_VERSION,
      ignore=("cfg", "seconds")), persist_result=True)  # fmt: skip
def download_manifest_task(cfg: DownloadConfig, run_dir: Path, shard_size: int, seconds: float,
                           shards: list[dict], output: dict) -> Manifest:  # fmt: skip
    """Cached on the shards' counts and the output fields: unchanged shards give the same
    manifest."""
    return write_download_manifest(cfg, run_dir, shard_size, seconds)


@task(name="buckets", cache_policy=stage_policy("buckets", BUCKETS_VERSION), persist_result=True)
def buckets_task(run_dir: Path, upstream: list[dict]) -> Manifest:
    return run_buckets(run_dir)
