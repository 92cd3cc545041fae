"""The train task: checks the inputs, runs the trainer in child processes (torchrun for
several), streams its log, shows progress in the UI, and fails with the trainer's error.
A run stopped by SIGTERM raises `TrainingStopped`; the retry resumes from the checkpoint.
A config or input error (a wrong model path: `model` is None) fails at once, unretried.
Cached on the train config, the bucket and caption manifests, the model's fingerprint and
the base LoKr's (`train.model.lokr`); torch is imported only when the stage runs."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from kohaku.logs import library_logs
from kohaku.stage import FileFingerprint, Manifest
from kohaku.train.config import TrainConfig
from kohaku.train.launch import parse_metrics
from tasks.policy import retryable, stage_policy
from tasks.progress import Progress

VERSION = "kohaku.train.config:TRAIN_VERSION"


@task(name="train", cache_policy=stage_policy("train", VERSION), persist_result=True,
      retries=3, retry_delay_seconds=30, retry_condition_fn=retryable, tags=["gpu"])  # fmt: skip
def train_task(cfg: TrainConfig, run_dir: Path, upstream: list[dict],
               model: FileFingerprint | None,
               base_lokr: FileFingerprint | None = None) -> Manifest:  # fmt: skip
    logger = get_run_logger()
    progress = Progress("train: optimizer steps done")

    def on_line(line: str) -> None:
        logger.info(line)
        metrics = parse_metrics(line)
        if metrics:
            progress(100.0 * metrics["step"] / metrics["total"])

    with library_logs(Path(run_dir) / "logs" / "train.log"):
        from kohaku.train.run import run_train  # torch: only when the stage runs

        return run_train(cfg, run_dir, on_line)
