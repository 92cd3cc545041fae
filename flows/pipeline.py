"""Flow `pipeline`: the whole run as one flow of subflows: build-dataset (sample, tag),
images (download, buckets) and, when the config has those sections, train and evaluate.
Each subflow keeps its own caching and resume, so a rerun redoes only what failed.
Run it: `python -m flows.pipeline --config run.toml`."""

from __future__ import annotations

from prefect import flow

from flows.build_dataset import build_dataset
from flows.cli import config_from, config_parser
from flows.evaluate import evaluate
from flows.images import images_flow
from flows.train import train
from kohaku.config import RunConfig


@flow(name="pipeline", log_prints=True)
def pipeline(config: RunConfig, shard_size: int = 2000) -> dict:
    """Metadata to captions to images to a trained LoKr; returns each part's summary."""
    out = {"dataset": build_dataset(config), "images": images_flow(config)(config, shard_size)}
    if config.train is not None:
        out["train"] = train(config)
    if config.evaluate is not None:
        out["evaluate"] = evaluate(config)
    return out


def main(argv: list[str] | None = None) -> None:
    args = config_parser(__doc__, shards=True).parse_args(argv)
    print(pipeline(config_from(args), args.shard_size))


if __name__ == "__main__":
    main()
