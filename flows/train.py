"""Flow `train`: LoKr fine-tuning of SDXL on a run's bucket manifest and captions, with
the loss curve and the summary in the UI.
Run it: `python -m flows.train --config run.toml` after `images`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from kohaku.config import RunConfig, load_config
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    print(train(load_config(args.config, args.preset, args.overrides)))


if __name__ == "__main__":
    main()
