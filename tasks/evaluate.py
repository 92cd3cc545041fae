"""The evaluate task: sample every chosen checkpoint with fixed prompts and seeds, score
them, with a progress artifact. Not cached by Prefect: the stage reuses its pictures and
scores in place when their settings match."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from kohaku.evaluate.config import EvaluateConfig
from kohaku.evaluate.stage import run_evaluate
from kohaku.stage import Manifest


@task(name="evaluate", cache_policy=NO_CACHE, retries=1, tags=["gpu"])
def evaluate_task(cfg: EvaluateConfig, run_dir: Path) -> Manifest:
    progress = create_progress_artifact(0.0, description="evaluate: pictures of this checkpoint")

    def on_progress(label: str, done: int, total: int) -> None:
        update_progress_artifact(progress, 100.0 * done / max(total, 1), description=label)

    return run_evaluate(cfg, run_dir, progress=on_progress)
