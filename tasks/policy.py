"""Cache policy shared by the stage tasks.

A stage is cached on its inputs (the typed config, the fingerprints of its input files or
the upstream manifest), the task's source, and the stage's version: Prefect's
TASK_SOURCE only sees the task body, not the library it calls (prefect-notes.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.tasks import Task

import kohaku
from kohaku.stage import MANIFEST


@dataclass
class StageVersion(CachePolicy):
    """Adds the stage version and the kohaku version to the cache key."""

    stage: str = ""
    version: str = ""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs: Any) -> str:
        return f"{self.stage}-v{self.version}-kohaku{kohaku.__version__}"


def stage_policy(stage: str, version: str) -> CachePolicy:
    return INPUTS + TASK_SOURCE + StageVersion(stage=stage, version=version)


def for_run(task: Task, run_dir: Path, stage: str) -> Task:
    """The task with results persisted under the run dir; a stage whose output folder
    was removed since it was cached is re-executed instead of returning a stale result."""
    done = (Path(run_dir) / stage / MANIFEST).is_file()
    return task.with_options(
        result_storage=Path(run_dir).resolve() / ".prefect" / "results",
        refresh_cache=not done,
    )
