"""What every flow shares: the command line (`--config run.toml`, `--preset NAME`,
`--set section.field=value`) and the flow parameters it maps to (a whole `RunConfig`, or
a preset and/or a config file plus overrides), resolved into one `RunConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

from kohaku.config import RunConfig, deep_merge, load_config, parse_override, validate
from kohaku.errors import ConfigError

# the flow parameters' descriptions (Prefect shows them in the run form)
PARAMETER_DOCS = """
        config: the whole run config (every stage's section); empty = built from
            `preset`, `config_file` and `overrides`
        preset: a built-in recipe preset: delta, epsilon or gamma
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
    parser.add_argument("--preset", help="built-in preset: delta, epsilon or gamma")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a field: section.field=value (TOML value)")  # fmt: skip
    if shards:
        parser.add_argument("--shard-size", type=int, default=2000, help="posts per shard")
    return parser


def config_from(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.preset, args.overrides)


def resolve(
    config: RunConfig | None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The run config of a flow run: `config` as given (overrides applied on top), else the
    preset and the file with the overrides; one clear error when it is not valid."""
    overrides = list(overrides or [])
    if config is not None:
        if preset or config_file:
            raise ConfigError("give either config, or preset / config_file, not both")
        return _override(config, overrides) if overrides else config
    if not preset and not config_file:
        raise ConfigError("a run needs a config, a preset or a config_file")
    return load_config(Path(config_file) if config_file else None, preset, overrides)


def _override(config: RunConfig, overrides: list[str]) -> RunConfig:
    data = config.model_dump(mode="json", exclude_none=True)
    for item in overrides:
        data = deep_merge(data, parse_override(item))
    return validate(data)


def stage_section(config: RunConfig, name: str):
    """`config.<name>` (train or evaluate) with the tag stage's caption layout when it sets
    none; one clear error when the config has no such section."""
    cfg = getattr(config, name)
    if cfg is None:
        raise ConfigError(f"the config has no [{name}] section")
    if cfg.layout is None:  # the captions were laid out by the tag stage
        cfg = cfg.model_copy(update={"layout": config.tag.layout})
    return cfg
