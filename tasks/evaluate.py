"""The evaluate task: sample every chosen checkpoint with fixed prompts and seeds, score
them, with a progress artifact. Cached on the evaluate config and the train, bucket and
caption manifests; when it runs, the stage still reuses pictures and scores whose
settings match."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from kohaku.evaluate.config import EvaluateConfig
from kohaku.logs import library_logs
from kohaku.stage import Manifest
from tasks.policy import retryable, stage_policy
from tasks.progress import Progress

VERSION = "kohaku.evaluate.config:EVALUATE_VERSION"


@task(name="evaluate", cache_policy=stage_policy("evaluate", VERSION), persist_result=True,
      retries=1, retry_condition_fn=retryable, tags=["gpu"])  # fmt: skip
def evaluate_task(cfg: EvaluateConfig, run_dir: Path, upstream: list[dict]) -> Manifest:
    progress = Progress("evaluate: pictures of this checkpoint")

    def on_progress(label: str, done: int, total: int) -> None:
        progress(100.0 * done / max(total, 1), description=label)

    with library_logs(Path(run_dir) / "logs" / "evaluate.log"):
        from kohaku.evaluate.run import run_evaluate  # torch: only when the stage runs

        return run_evaluate(cfg, run_dir, progress=on_progress)
