"""Flow `train`: LoKr fine-tuning of SDXL on a run's bucket manifest and captions, with
the loss curve and the summary in the UI.
Run it: `python -m flows.train --config run.toml` after `images`."""

from __future__ import annotations

import json

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.cli import config_from, config_parser
from kohaku.config import RunConfig
from kohaku.errors import ConfigError
from tasks.train import train_task


@flow(name="train", log_prints=True)
def train(config: RunConfig) -> dict:
    """Train (or resume) the run's LoKr; returns the stage counts."""
    if config.train is None:
        raise ConfigError("the config has no [train] section")
    run_dir = config.run_dir.resolve()
    cfg = config.train
    if cfg.layout is None:  # the captions were laid out by the tag stage
        cfg = cfg.model_copy(update={"layout": config.tag.layout})
    manifest = train_task(cfg, run_dir)
    metrics = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").open()]
    create_table_artifact(metrics[-50:], key="train-metrics", description="train: last steps")
    return manifest.counts


def main(argv: list[str] | None = None) -> None:
    print(train(config_from(config_parser(__doc__).parse_args(argv))))


if __name__ == "__main__":
    main()
