"""The command line every flow module shares: `--config run.toml`, `--preset NAME` and
`--set section.field=value` overrides, resolved into a `RunConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

from kohaku.config import RunConfig, load_config


def config_parser(doc: str | None, shards: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--config", type=Path, help="run config TOML")
    parser.add_argument("--preset", help="built-in preset: delta, epsilon or gamma")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a field: section.field=value (TOML value)")  # fmt: skip
    if shards:
        parser.add_argument("--shard-size", type=int, default=2000, help="posts per shard")
    return parser


def config_from(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.preset, args.overrides)
