"""The merge task: one recipe (TOML) streamed into one merged checkpoint; a crash is
retried once (the output is written atomically), a bad recipe or input never."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.policy import retryable


@task(name="merge", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retryable, tags=["cpu"])  # fmt: skip
def merge_task(recipe: Path) -> dict:
    from kohaku.merge import load_recipe, merge  # torch: only when a merge runs

    result = merge(load_recipe(recipe))
    return {"output": str(result.output), "tensors": result.tensors, "bytes": result.bytes,
            "seconds": round(result.seconds, 2)}  # fmt: skip
