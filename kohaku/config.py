"""The run config: one pydantic model composed of the stage configs, loaded from TOML.

Reads: a user TOML file, the built-in presets in `kohaku/presets/` (`delta`, `epsilon`,
`epsilon-rev2`, `gamma`) and `--set key=value` overrides. Writes nothing.
A user file may start from a preset (`preset = "delta"`) and override any field.

A config loaded for one stage (`load_config(..., stage="train")`, as `kohaku train` and the
`train` flow do) needs only the sections that stage reads: `sample` for sample and
build-dataset, `train` for train, `evaluate` for evaluate (the other sections have
defaults). The sections it does not read may be left out, or be incomplete (a preset's
`[sample]` has no `source`); a wrong value anywhere is still an error.
"""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kohaku.download.config import DownloadConfig
from kohaku.errors import ConfigError, explain
from kohaku.evaluate.config import EvaluateConfig
from kohaku.sample.config import SampleConfig
from kohaku.tag.config import TagConfig
from kohaku.train.config import TrainConfig

# a preset is `kohaku/presets/<name>.toml`; epsilon-rev2 also sets [train] (so a config
# from it must name train.model.path) and no sample ranges (the selection is the user's);
# zeta (ours, not a published recipe) sets [train] too and draws texts (tag.text_captions)
PRESETS = ("delta", "epsilon", "epsilon-rev2", "gamma", "zeta")
# paths that a config file may give relative to itself
PATH_FIELDS = ("run_dir", "sample.source", "tag.text_captions", "download.source_path",
               "train.model.path", "train.model.config_dir", "train.model.restore_embeddings_from",
               "train.model.lokr", "train.latent_cache", "evaluate.clip_model",
               "evaluate.ccip_model", "evaluate.inception", "evaluate.base_model.path",
               "evaluate.base_model.config_dir", "evaluate.base_model.lokr")  # fmt: skip


class Resources(BaseModel):
    """How much of the machine the data stages use; never changes their output."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    threads: int | None = Field(None, ge=1, description="DuckDB threads; empty = all cores")
    memory_limit: str | None = Field(
        None, pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B$",
        description="DuckDB memory limit, e.g. 6GB (spills to disk beyond); empty = 80% of RAM",
    )  # fmt: skip
    tag_batch_posts: int = Field(
        1_000_000, ge=1, description="posts per tag-stage batch (bounds its memory)"
    )


class RunnerConfig(BaseModel):
    """Where a flow's parallel tasks (download shards) run: threads in the flow's process,
    or an existing Dask cluster (the `dask` extra); never changes their output. With Dask,
    the run dir must be on storage every worker sees."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["threads", "dask"] = Field("threads", description="threads or dask")
    address: str | None = Field(
        None, description="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (kind = dask)"
    )
    max_workers: int | None = Field(None, ge=1, description="threads; empty = Prefect default")

    @model_validator(mode="after")
    def _check(self) -> RunnerConfig:
        if (self.kind == "dask") != (self.address is not None):
            raise ValueError("runner.address is needed for kind = 'dask' and only for it")
        return self


class RunConfig(BaseModel):
    """Everything a pipeline run needs; each stage reads its own section."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    preset: str | None = Field(None, description="built-in preset the config started from")
    run_dir: Path = Field(Path("runs/default"), description="folder of the run's stage outputs")
    sample: SampleConfig | None = Field(
        None, description="post selection; needed by sample, build-dataset and pipeline"
    )
    tag: TagConfig = Field(TagConfig(), description="captions")
    download: DownloadConfig = Field(DownloadConfig(), description="images: fetch, check, resize")
    resources: Resources = Field(Resources(), description="threads and memory of the stages")
    runner: RunnerConfig = Field(RunnerConfig(), description="where parallel tasks run")
    train: TrainConfig | None = Field(None, description="LoKr training; empty = no training")
    evaluate: EvaluateConfig | None = Field(
        None, description="sample grids and scores of the trained checkpoints; empty = none"
    )


# the sections without defaults that each stage (command or flow) reads; pipeline (None)
# reads every section given, and needs `sample`
SECTIONS = {"sample": SampleConfig, "train": TrainConfig, "evaluate": EvaluateConfig}
STAGE_NEEDS: dict[str, tuple[str, ...]] = {
    "sample": ("sample",), "build-dataset": ("sample",), "tag": (), "download": (),
    "buckets": (), "images": (), "train": ("train",), "evaluate": ("evaluate",),
}  # fmt: skip


def stage_section(config: RunConfig, name: str):
    """`config.<name>`; for train and evaluate with the tag stage's caption layout when it
    sets none. One clear error when the config has no such section."""
    cfg = getattr(config, name)
    if cfg is None:
        raise ConfigError(f"the config has no [{name}] section, which the {name} stage reads")
    if "layout" in type(cfg).model_fields and cfg.layout is None:  # laid out by the tag stage
        cfg = cfg.model_copy(update={"layout": config.tag.layout})
    return cfg


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("kohaku.presets").joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins; tables merge recursively, lists and scalars are replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict[str, Any]:
    """`sample.seed=3` -> {"sample": {"seed": 3}}; the value is read as TOML, else a string."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        out = {part: out}
    return out


def load_config(
    path: Path | None = None,
    preset: str | None = None,
    overrides: list[str] = (),
    stage: str | None = None,
) -> RunConfig:
    """Preset, then the file, then overrides; relative paths in the file are taken
    relative to the file's folder. With `stage`, the config of that stage alone (module
    docstring); without, every section given must be complete."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_toml(Path(path))
    name = preset or data.get("preset")
    merged = deep_merge(preset_dict(name), data) if name else data
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    if name:
        merged["preset"] = name
    return validate(merged, stage)


def validate(data: dict[str, Any], stage: str | None = None) -> RunConfig:
    """The RunConfig of `data`; with `stage`, of that stage alone (module docstring)."""
    if stage is not None:
        data = _without_unread_incomplete(data, stage)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {explain(exc)}") from None
    for name in STAGE_NEEDS[stage] if stage is not None else ():
        stage_section(config, name)
    return config


def _without_unread_incomplete(data: dict[str, Any], stage: str) -> dict[str, Any]:
    """`data` without the sections the stage does not read that lack a required field
    (a preset's `[sample]` without its source); a wrong value or key in them stays an error."""
    if stage not in STAGE_NEEDS:
        raise ConfigError(f"unknown stage {stage!r}; one of {', '.join(STAGE_NEEDS)}")
    out = dict(data)
    for name, model in SECTIONS.items():
        if name in STAGE_NEEDS[stage] or not isinstance(out.get(name), dict):
            continue
        try:
            model.model_validate(out[name])
        except ValidationError as exc:
            if all(err["type"] == "missing" for err in exc.errors()):
                del out[name]
    return out


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a one-line ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    data = read_toml(path)
    base = path.resolve().parent
    for dotted in PATH_FIELDS:
        *sections, key = dotted.split(".")
        table = data
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        if isinstance(table, dict) and isinstance(table.get(key), str):
            p = Path(table[key]).expanduser()
            table[key] = str(p if p.is_absolute() else base / p)
    return data
