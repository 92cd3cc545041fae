"""Flow `train`: LoKr fine-tuning of SDXL on a run's bucket manifest and captions, with
the loss curve (the validation loss beside it, with `train.validation`), the metrics and
the summary in the UI.
Run it: `python -m flows.train --config run.toml` after `images`."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import config_from, config_parser, documented, resolve
from flows.report import finished
from kohaku.cli.common import one_line_errors
from kohaku.config import RunConfig, stage_section
from kohaku.ops.charts import loss_chart_markdown, metric_table
from kohaku.stage import FileFingerprint
from tasks.policy import file_key, for_run, inputs_of
from tasks.train import train_task


@flow(name="train", log_prints=True)
@documented
def train(
    config: RunConfig | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Train (or resume) the run's LoKr; returns the stage counts."""
    config = resolve(config, preset, config_file, overrides, stage="train")
    run_dir, cfg = config.run_dir.resolve(), stage_section(config, "train")
    upstream = inputs_of(run_dir, "buckets", "tag", then="train")
    state = for_run(train_task, run_dir, "train")(
        cfg, run_dir, upstream, model_key(cfg.model.path), file_key(cfg.model.lokr),
        return_state=True,
    )  # fmt: skip
    manifest = finished("train", state)
    metrics = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").open()]
    create_table_artifact(metric_table(metrics[-50:]), key="train-metrics",
                          description="train: last steps")  # fmt: skip
    create_markdown_artifact(loss_chart_markdown(metrics), key="train-loss",
                             description="train: loss curve (and validation loss)")  # fmt: skip
    return manifest.counts


def model_key(path: Path) -> FileFingerprint | None:
    """The base model's identity for the task's cache key; None for a missing path, which
    the task then reports as its input error (one line, in seconds, never retried)."""
    return file_key(path)


def main(argv: list[str] | None = None) -> None:
    with one_line_errors("flows.train"):
        print(train(config_from(config_parser(__doc__).parse_args(argv), "train")))


if __name__ == "__main__":
    main()
