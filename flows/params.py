"""What every flow shares: its parameters (a whole `RunConfig`, or a preset and/or a
config file plus overrides) resolved into one `RunConfig`, their descriptions for the UI
form, and the `python -m flows.<name>` command line that maps onto them (`--config
run.toml`, `--preset NAME`, `--set section.field=value`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kohaku.config import PRESETS, RunConfig, deep_merge, load_config, parse_override, validate
from kohaku.errors import ConfigError

# the flow parameters' descriptions (Prefect shows them in the run form)
PRESET_NAMES = f"{', '.join(PRESETS[:-1])} or {PRESETS[-1]}"  # the registered presets
PARAMETER_DOCS = f"""
        config: the whole run config (every stage's section); empty = built from
            `preset`, `config_file` and `overrides`
        preset: a built-in recipe preset: {PRESET_NAMES}
        config_file: a run config TOML on the worker's disk (paths in it are relative to it)
        overrides: fields to override, `section.field=value` (TOML values), e.g.
            `sample.seed=3`"""


def documented(fn):
    """Appends the shared parameters' descriptions to a flow's docstring (before `@flow`
    reads it for the UI form)."""
    doc = (fn.__doc__ or "").rstrip()
    fn.__doc__ = doc + ("" if "Args:" in doc else "\n\n    Args:") + PARAMETER_DOCS
    return fn


def config_parser(doc: str | None, shards: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--config", type=Path, help="run config TOML")
    parser.add_argument("--preset", help=f"built-in preset: {PRESET_NAMES}")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a field: section.field=value (TOML value)")  # fmt: skip
    if shards:
        parser.add_argument("--shard-size", type=int, default=2000, help="posts per shard")
    return parser


def config_from(args: argparse.Namespace, stage: str | None = None) -> RunConfig:
    """The command line's config, of `stage` alone when given (`kohaku.config`)."""
    return load_config(args.config, args.preset, args.overrides, stage)


def resolve(
    config: RunConfig | None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    stage: str | None = None,
) -> RunConfig:
    """The run config of a flow run: `config` as given (overrides applied on top), else the
    preset and the file with the overrides; of `stage` alone when given (a train-only config
    for the train flow); one clear error when it is not valid."""
    overrides = list(overrides or [])
    if config is not None:
        if preset or config_file:
            raise ConfigError("give either config, or preset / config_file, not both")
        return _override(config, overrides, stage) if overrides else config
    if not preset and not config_file:
        raise ConfigError("a run needs a config, a preset or a config_file")
    return load_config(Path(config_file) if config_file else None, preset, overrides, stage)


def _override(config: RunConfig, overrides: list[str], stage: str | None) -> RunConfig:
    data = config.model_dump(mode="json", exclude_none=True)
    for item in overrides:
        data = deep_merge(data, parse_override(item))
    return validate(data, stage)
