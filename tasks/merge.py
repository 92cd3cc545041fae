"""The merge task: one recipe (TOML) streamed into one merged checkpoint."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE


@task(name="merge", cache_policy=NO_CACHE, tags=["cpu"])
def merge_task(recipe: Path) -> dict:
    from kohaku.merge import load_recipe, merge  # torch: only when a merge runs

    result = merge(load_recipe(recipe))
    return {"output": str(result.output), "tensors": result.tensors, "bytes": result.bytes,
            "seconds": round(result.seconds, 2)}  # fmt: skip
