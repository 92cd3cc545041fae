"""Flow `train`: LoKr fine-tuning of SDXL on a run's bucket manifest and captions, with
the loss curve, the metrics and the summary in the UI.
Run it: `python -m flows.train --config run.toml` after `images`."""

from __future__ import annotations

import json

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.cli import config_from, config_parser, documented, resolve, stage_section
from flows.report import finished
from kohaku.charts import loss_chart_markdown
from kohaku.config import RunConfig
from kohaku.stage import fingerprint
from tasks.policy import for_run, inputs_of
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
    config = resolve(config, preset, config_file, overrides)
    run_dir, cfg = config.run_dir.resolve(), stage_section(config, "train")
    upstream = inputs_of(run_dir, "buckets", "tag", then="train")
    state = for_run(train_task, run_dir, "train")(
        cfg, run_dir, upstream, fingerprint(cfg.model.path), return_state=True
    )
    manifest = finished("train", state)
    metrics = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").open()]
    create_table_artifact(metrics[-50:], key="train-metrics", description="train: last steps")
    create_markdown_artifact(loss_chart_markdown(metrics), key="train-loss",
                             description="train: loss curve")  # fmt: skip
    return manifest.counts


def main(argv: list[str] | None = None) -> None:
    print(train(config_from(config_parser(__doc__).parse_args(argv))))


if __name__ == "__main__":
    main()
