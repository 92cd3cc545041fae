"""Tasks of the data front: sample (DuckDB) and tag (Polars). `resources` (threads,
memory) never changes a stage's output, so it is left out of the cache key."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from kohaku.config import Resources
from kohaku.sample import SAMPLE_VERSION, SampleConfig, run_sample
from kohaku.stage import FileFingerprint, Manifest
from kohaku.tag import TAG_VERSION, TagConfig, run_tag
from tasks.policy import retryable, stage_policy


@task(name="sample", cache_policy=stage_policy("sample", SAMPLE_VERSION, ignore=("resources",)),
      persist_result=True, retries=1, retry_delay_seconds=5, retry_condition_fn=retryable,
      tags=["cpu", "data"])  # fmt: skip
def sample_task(
    cfg: SampleConfig, run_dir: Path, source_inputs: dict, resources: Resources
) -> Manifest:
    """`source_inputs` (fingerprint of the metadata) is part of the cache key."""
    return run_sample(cfg, run_dir, threads=resources.threads, memory_limit=resources.memory_limit)


@task(name="tag", cache_policy=stage_policy("tag", TAG_VERSION, ignore=("resources",)),
      persist_result=True, retries=1, retry_delay_seconds=5, retry_condition_fn=retryable,
      tags=["cpu", "data"])  # fmt: skip
def tag_task(cfg: TagConfig, run_dir: Path, sample: Manifest, resources: Resources,
             texts: FileFingerprint | None = None) -> Manifest:  # fmt: skip
    """The upstream sample manifest and `texts` (the fingerprint of `tag.text_captions`,
    `policy.file_key`: the config names the file only by its path) are part of the cache
    key."""
    return run_tag(cfg, run_dir, batch_posts=resources.tag_batch_posts)
