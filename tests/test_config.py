"""Run config: presets, TOML files, overrides, and clear errors for bad input."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from kohaku.config import PRESETS, load_config, parse_override, stage_section, validate
from kohaku.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("preset", "layout", "percentiles", "counts"),
    [
        ("delta", "delta", [95, 85, 75, 50, 25, 10], [1_000_000, 1_000_000, "all"]),
        ("epsilon", "epsilon", [90, 75, 60, 45, 30, 10], [1_000_000, 2_000_000, "all"]),
        ("gamma", "delta", [95, 85, 75, 50, 25, 10], ["all"]),
    ],
)
def test_presets_carry_the_recipe_numbers(tmp_path, preset, layout, percentiles, counts):
    cfg = load_config(preset=preset, overrides=[f'sample.source="{tmp_path}"'])
    assert cfg.preset == preset
    assert cfg.tag.layout == layout
    assert cfg.tag.quality.percentiles == percentiles
    assert [r.count for r in cfg.sample.ranges] == counts


def test_delta_ranges_are_the_recipes():
    cfg = load_config(preset="delta", overrides=['sample.source="x"'])
    assert [(r.start, r.end) for r in cfg.sample.ranges] == [
        (0, 3_000_000), (3_000_000, 5_000_000), (5_000_000, None)]  # fmt: skip
    assert cfg.sample.filter_timing == "after_sampling"


def test_file_starts_from_preset_and_overrides_fields(tmp_path):
    path = write(
        tmp_path / "run.toml",
        """
preset = "epsilon"
run_dir = "out"
[sample]
source = "meta/db.sqlite"
seed = 5
[tag.quality]
min_age_days = 14
""",
    )
    cfg = load_config(path, overrides=["sample.seed=9", 'tag.layout="hakubooru"'])
    assert cfg.preset == "epsilon"
    assert cfg.sample.seed == 9
    assert cfg.tag.layout == "hakubooru"
    assert cfg.tag.quality.min_age_days == 14
    assert cfg.tag.quality.percentiles == [90, 75, 60, 45, 30, 10]  # from the preset
    assert cfg.sample.source == tmp_path / "meta" / "db.sqlite"  # relative to the file
    assert cfg.run_dir == tmp_path / "out"


def test_config_hash_is_stable_across_loads(tmp_path):
    from kohaku.stage import config_hash

    a = load_config(preset="delta", overrides=['sample.source="x"'])
    b = load_config(preset="delta", overrides=['sample.source="x"'])
    c = load_config(preset="delta", overrides=['sample.source="x"', "sample.seed=1"])
    assert config_hash(a.sample) == config_hash(b.sample) != config_hash(c.sample)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("sample.seed=3", {"sample": {"seed": 3}}),
        ("tag.layout=delta", {"tag": {"layout": "delta"}}),
        ('tag.count_tags=["1girl"]', {"tag": {"count_tags": ["1girl"]}}),
    ],
)
def test_parse_override(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"sample": {"source": "x", "bogus": 1}}, "sample.bogus: Extra inputs are not permitted"),
        ({"sample": {"source": "x", "ranges": [{"start": 0, "end": 10}, {"start": 5}]}},
         "overlap"),
        ({"sample": {"source": "x", "ranges": [{"start": 10, "end": 10}]}}, "end must be > start"),
        ({"sample": {"source": "x", "ranges": [{"count": 0}]}}, "count 0 must be >= 1"),
        ({"sample": {"source": "x", "ranges": [{}, {"name": "a", "any_tags": []}]}},
         "sample.ranges.1.any_tags: an empty tag list"),
        ({"sample": {"source": "x", "ranges": [{"name": "a", "excluded_tags": ["x"],
                                                "repeats": 0}]}},
         "sample.ranges.0.repeats: Input should be greater than or equal to 1"),
        ({"sample": {"source": "x", "ranges": [{"name": "a", "any_tags": ["x"]},
                                               {"name": "a", "any_tags": ["y"]}]}},
         "range names given more than once: ['a']"),
        ({"sample": {"source": "x", "filters": {"min_pixels": 10, "max_pixels": 5}}},
         "min_pixels"),
        ({"sample": {"source": "x"}, "tag": {"quality": {"percentiles": [10, 50]}}},
         "strictly descending"),
        ({"sample": {"source": "x"}, "tag": {"layout": "nope"}}, "tag.layout"),
        ({"sample": {"source": "x"}, "runner": {"kind": "dask"}}, "runner.address is needed"),
        ({"sample": {"source": "x"}, "runner": {"address": "tcp://h:8786"}}, "only for it"),
        ({"sample": {"source": "x"}, "download": {"source": "tar"}}, "needs source_path"),
        ({"sample": {"source": "x"}, "download": {"buckets": {"min_side": 100}}},
         "not a multiple of step"),
    ],
)  # fmt: skip
def test_bad_configs_fail_with_a_message_naming_the_field(data, fragment):
    with pytest.raises(ConfigError, match="invalid config") as err:
        validate(data)
    assert fragment in str(err.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'omega'"):
        load_config(preset="omega")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path / "bad.toml", "[sample\n"))


def test_all_presets_are_listed():
    assert set(PRESETS) == {"delta", "epsilon", "epsilon-rev2", "gamma", "zeta"}
    shipped = resources.files("kohaku.presets").iterdir()
    assert {p.name.removesuffix(".toml") for p in shipped if p.name.endswith(".toml")} == set(
        PRESETS
    )


def readme_rev2_example() -> str:
    """The TOML block of the README's rev2 example."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- rev2-example")[1].split("```toml\n")[1]
    return block.split("```")[0]


def test_epsilon_rev2_preset_carries_the_card_numbers(tmp_path):
    cfg = load_config(write(tmp_path / "rev2.toml", readme_rev2_example()))
    assert cfg.preset == "epsilon-rev2"
    assert cfg.tag.layout == "epsilon"
    assert cfg.tag.quality.percentiles == [90, 75, 60, 45, 30, 10]
    t = cfg.train
    assert (t.batch_size, t.grad_accum, t.dist.world_size, t.global_batch) == (4, 32, 4, 512)
    assert (t.optim.kind, t.optim.lr_unet, t.optim.lr_text) == ("lion8bit", 1e-5, 2e-6)
    assert (t.optim.schedule, t.optim.warmup_steps) == ("cosine", 1000)
    assert (t.optim.weight_decay, t.optim.betas) == (0.1, (0.9, 0.95))
    assert (t.loss.noise_offset, t.loss.min_snr_gamma) == (0.0357, 5.0)
    assert (t.epochs, t.max_steps, t.precision, t.captions.tag_dropout) == (5, None, "fp16", 0.15)
    assert t.model.path == Path("/models/kohaku-xl-epsilon-rev1.safetensors")
    # the README's selection: two subsets and a plain range, with their counts and repeats
    ranges = cfg.sample.ranges
    assert [(r.key, r.count, r.repeats, r.tagged) for r in ranges] == [
        ("artists", "all", 3, True), ("series", 300_000, 2, True),
        ("[6000000, end)", 500_000, 1, False)]  # fmt: skip
    assert ranges[1].excluded_tags == ["comic"] and "ask_(askzy)" in ranges[0].any_tags


def test_epsilon_rev2_needs_a_selection_and_a_base():
    with pytest.raises(ConfigError) as err:
        load_config(preset="epsilon-rev2", overrides=['sample.source="x"'])
    assert "sample: sample.ranges is empty" in str(err.value)
    assert "train.model: Field required" in str(err.value)
    cfg = load_config(preset="epsilon-rev2", overrides=[
        'sample.source="x"', 'sample.ranges=[{name = "a", any_tags = ["wlop"]}]',
        'train.model.path="/models/rev1.safetensors"'])  # fmt: skip
    assert cfg.sample.ranges[0].any_tags == ["wlop"] and cfg.train.epochs == 5


@pytest.mark.parametrize("limit", ["6GB", "512MiB", "1.5 GB"])
def test_resources_accept_duckdb_memory_limits(limit):
    cfg = validate({"sample": {"source": "x"}, "resources": {"memory_limit": limit, "threads": 2}})
    assert cfg.resources.memory_limit == limit and cfg.resources.threads == 2


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        ({"memory_limit": "lots"}, "resources.memory_limit"),
        ({"threads": 0}, "resources.threads"),
        ({"tag_batch_posts": 0}, "resources.tag_batch_posts"),
    ],
)
def test_bad_resources(resources, fragment):
    with pytest.raises(ConfigError, match=fragment):
        validate({"sample": {"source": "x"}, "resources": resources})


def test_a_stage_reads_only_its_sections(tmp_path):
    """`kohaku train -c train.toml`: a train-only config, or a preset whose [sample] has no
    source; the sections a stage does not read may be missing or incomplete."""
    path = write(tmp_path / "train.toml", '[train.model]\npath = "sdxl.safetensors"\n')
    cfg = load_config(path, stage="train")
    assert cfg.sample is None and cfg.train.model.path == tmp_path / "sdxl.safetensors"
    cfg = load_config(path, "delta", stage="train")
    assert cfg.sample is None and stage_section(cfg, "train").layout == "delta"  # from [tag]
    assert load_config(path, "delta", stage="download").train == cfg.train
    with pytest.raises(ConfigError, match="sample.source: Field required"):
        load_config(path, "delta")  # no stage: every section given must be complete


def test_a_wrong_value_in_an_unread_section_is_still_an_error(tmp_path):
    path = write(tmp_path / "train.toml", '[train.model]\npath = "m"\n[sample]\nseed = "x"\n')
    with pytest.raises(ConfigError, match="sample.seed"):
        load_config(path, stage="train")
    with pytest.raises(ConfigError, match="train.model: Field required"):
        load_config(preset="delta", overrides=["train.seed=1"], stage="train")


@pytest.mark.parametrize(
    ("stage", "section"),
    [("sample", "sample"), ("build-dataset", "sample"), ("train", "train"),
     ("evaluate", "evaluate")],
)  # fmt: skip
def test_a_stage_without_its_section_is_one_clear_error(stage, section):
    """Changed with issue 12: `validate({})` is a valid config (no stage reads it yet);
    the stage that needs the missing section names it."""
    assert validate({}).sample is None
    with pytest.raises(ConfigError) as err:
        validate({}, stage)
    assert (
        str(err.value) == f"the config has no [{section}] section, which the {section} stage reads"
    )
