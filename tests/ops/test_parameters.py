"""The flows' parameters: what the UI's form shows (every field described, defaults) and
how a run's config is resolved from them (a whole config, or a preset / file plus
overrides; one clear error otherwise)."""

from __future__ import annotations

import pytest

from kohaku.config import load_config
from kohaku.errors import ConfigError


def test_the_form_shows_every_parameter_and_config_field_described():
    from flows.pipeline import pipeline

    schema = pipeline.parameters.model_dump()
    props = schema["properties"]
    assert list(props) == ["config", "shard_size", "preset", "config_file", "overrides"]
    assert all(p.get("description") for p in props.values())
    definitions = schema["definitions"]
    assert "RunConfig" in definitions and "SampleConfig" in definitions
    for name, model in definitions.items():
        for field, spec in model.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{field} has no description"


def test_every_help_names_the_registered_presets(capsys):
    """The flows' form, their command lines and the CLI list the presets `kohaku.config`
    registers (epsilon-rev2 and zeta included), not a list typed once."""
    from flows.params import config_parser
    from flows.pipeline import pipeline
    from kohaku.cli import main
    from kohaku.config import PRESETS

    form = pipeline.parameters.model_dump()["properties"]["preset"]["description"]
    flow_help = config_parser("flow").format_help()
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    cli_help = " ".join(capsys.readouterr().out.split())  # argparse wraps the line
    assert {"epsilon-rev2", "zeta"} <= set(PRESETS)
    for name in PRESETS:
        assert name in form and name in flow_help and name in cli_help, name


def test_a_run_config_from_a_preset_and_overrides_or_a_whole_config(tmp_path):
    from flows.params import resolve

    cfg = resolve(None, "delta", None, ["sample.source='meta'", "sample.seed=4"])
    assert (cfg.preset, cfg.sample.seed, str(cfg.sample.source)) == ("delta", 4, "meta")
    assert resolve(cfg) is cfg
    changed = resolve(cfg, overrides=["tag.escape_brackets=true"])
    assert changed.tag.escape_brackets and changed.sample == cfg.sample
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "epsilon"\n[sample]\nsource = "db.sqlite"\n')
    assert resolve(None, None, str(toml), ["sample.seed=2"]) == load_config(
        toml, None, ["sample.seed=2"]
    )
    with pytest.raises(ConfigError, match="needs a config, a preset or a config_file"):
        resolve(None)
    with pytest.raises(ConfigError, match="sample.seed"):
        resolve(None, "delta", None, ["sample.source='meta'", "sample.seed='x'"])
