"""TagConfig and QualityConfig validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kohaku.config import load_config
from kohaku.errors import ConfigError
from kohaku.tag.config import QUALITY_TAGS, QualityConfig, TagConfig


def test_defaults_are_the_recipe() -> None:
    q = QualityConfig()
    assert q.percentiles == [95, 85, 75, 50, 25, 10]
    assert q.tags == [
        "masterpiece",
        "best quality",
        "great quality",
        "good quality",
        "normal quality",
        "low quality",
        "worst quality",
    ]
    cfg = TagConfig()
    assert cfg.layout == "epsilon" and cfg.underscores_to_spaces and not cfg.escape_brackets
    assert cfg.short_tag_max_len == 3 and cfg.tag_order == "relation"


@pytest.mark.parametrize(
    "percentiles",
    [
        [95, 95, 75, 50, 25, 10],
        [10, 25, 50, 75, 85, 95],
        [95, 85, 75, 50, 10, 25],
    ],
)
def test_percentiles_must_be_strictly_descending(percentiles: list[float]) -> None:
    with pytest.raises(ValidationError, match="strictly descending"):
        QualityConfig(percentiles=percentiles)


@pytest.mark.parametrize(
    "percentiles",
    [[100, 85, 75, 50, 25, 10], [95, 85, 75, 50, 25, 0], [95, 85, 75, 50, 25, -1], [150]],
)
def test_percentiles_must_lie_in_0_100(percentiles: list[float]) -> None:
    with pytest.raises(ValidationError, match="strictly between 0 and 100"):
        QualityConfig(percentiles=percentiles, tags=["t"] * (len(percentiles) + 1))


@pytest.mark.parametrize("n_tags", [1, 6, 8])
def test_quality_tags_one_more_than_thresholds(n_tags: int) -> None:
    with pytest.raises(ValidationError, match="needs 7 tags for 6 thresholds"):
        QualityConfig(tags=QUALITY_TAGS[:n_tags] + ["x"] * max(0, n_tags - 7))


def test_fewer_levels_accepted() -> None:
    q = QualityConfig(percentiles=[99.5, 0.5], tags=["best", "ok", "worst"])
    assert len(q.tags) == 3


@pytest.mark.parametrize(
    "table, message",
    [
        ({"general": [100, 50, 40, 30, 20]}, r"table\[general\] needs 6 thresholds"),
        ({"explicit": [100, 50, 40, 30, 20, 10, 5]}, r"table\[explicit\] needs 6"),
        ({"general": [100, 50, 60, 30, 20, 10]}, r"table\[general\] .* must not increase"),
        ({"sensitive": [1, 2, 3, 4, 5, 6]}, "must not increase"),
    ],
)
def test_bad_threshold_table(table: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QualityConfig(table=table)


def test_table_with_ties_accepted() -> None:
    q = QualityConfig(table={"general": [5, 5, 3, 3, 0, 0]})
    assert q.table == {"general": [5, 5, 3, 3, 0, 0]}


def test_table_rating_names_checked() -> None:
    with pytest.raises(ValidationError):
        QualityConfig(table={"safe": [6, 5, 4, 3, 2, 1]})


@pytest.mark.parametrize(
    "fields", [{"min_age_days": -1}, {"max_post_id": -1}, {"percentile": [90]}]
)
def test_bad_quality_fields(fields: dict) -> None:
    with pytest.raises(ValidationError):
        QualityConfig(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"layout": "gamma"},
        {"tag_order": "random"},
        {"short_tag_max_len": -1},
        {"rating_tags": {"nsfw": ["nsfw"]}},
        {"captions": "x"},
        {"quality": {"enabled": True, "extra": 1}},
        {"date_tags": [{"first_year": 2005, "tag": "old", "until": 2010}]},
    ],
)
def test_bad_tag_fields(fields: dict) -> None:
    with pytest.raises(ValidationError):
        TagConfig(**fields)


@pytest.mark.parametrize(
    "layout, explicit",
    [
        ("epsilon", ["nsfw", "explicit"]),
        ("delta", ["nsfw", "explicit"]),
        ("hakubooru", ["explicit", "nsfw"]),
    ],
)
def test_rating_tags_per_layout(layout: str, explicit: list[str]) -> None:
    assert TagConfig(layout=layout).resolved_rating_tags() == {
        "general": ["safe"],
        "sensitive": ["sensitive"],
        "questionable": ["nsfw"],
        "explicit": explicit,
    }


def test_count_tags_per_layout() -> None:
    haku = TagConfig(layout="hakubooru").resolved_count_tags()
    assert "no_humans" not in haku and {"1girl", "6+boys", "multiple_others"} <= set(haku)
    assert set(TagConfig(layout="epsilon").resolved_count_tags()) == set(haku) | {"no_humans"}
    assert TagConfig(count_tags=["solo"]).resolved_count_tags() == ["solo"]


def test_tag_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        TagConfig().layout = "delta"  # type: ignore[misc]


def test_normalize_defaults_to_rating() -> None:
    """The recipes rank within each rating; the date-aware options are opt-in (issue 14)."""
    q = QualityConfig()
    assert q.normalize == "rating" and q.min_posts_per_bin == 1000 and q.decay_per_year is None


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"normalize": "year"}, "normalize"),
        ({"normalize": "rating_year", "min_posts_per_bin": 0}, "min_posts_per_bin"),
        ({"min_posts_per_bin": -5}, "min_posts_per_bin"),
        ({"normalize": "rating_decay"}, r"needs tag.quality.decay_per_year in \(0, 1\]"),
        ({"normalize": "rating_decay", "decay_per_year": 0}, "decay_per_year"),
        ({"normalize": "rating_decay", "decay_per_year": 1.5}, "decay_per_year"),
        (
            {"normalize": "rating_year", "table": {"general": [6, 5, 4, 3, 2, 1]}},
            "table gives thresholds per rating only; normalize = 'rating_year'",
        ),
    ],
)
def test_bad_normalize_fields(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QualityConfig(**fields)


def test_bad_normalize_is_one_line_from_a_config_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=['sample.source="x.db"', 'tag.quality.normalize="date"'])
    assert "\n" not in str(info.value) and "tag.quality.normalize" in str(info.value)


def test_text_captions_path_is_relative_to_the_config_file(tmp_path) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "run.toml"
    path.write_text('[tag]\ntext_captions = "captions/florence.parquet"\n')
    cfg = load_config(path, stage="tag")
    assert cfg.tag.text_captions == tmp_path / "conf" / "captions" / "florence.parquet"
    assert TagConfig().text_captions is None


def test_zeta_preset_uses_texts_300_tokens_and_rating_year(tmp_path) -> None:
    """Issue 14 item 8: ours, not a published recipe; texts (item 2), 300 tokens (item 3),
    quality by rating x year (item 4) together; the text file and the base are the user's."""
    cfg = load_config(preset="zeta", overrides=[
        'sample.source="x.db"', f'tag.text_captions="{tmp_path / "florence.parquet"}"',
        'train.model.path="/models/epsilon-rev2.safetensors"'])  # fmt: skip
    assert cfg.preset == "zeta" and cfg.tag.layout == "epsilon"
    assert cfg.tag.text_captions == tmp_path / "florence.parquet"
    q = cfg.tag.quality
    assert (q.normalize, q.percentiles) == ("rating_year", [90, 75, 60, 45, 30, 10])
    c = cfg.train.captions
    assert (c.max_tokens, c.p_tags, c.p_text, c.p_both) == (300, 0.5, 0.25, 0.25)
    assert c.uses_text and c.tag_dropout == 0.15
    assert (cfg.train.optim.lr_unet, cfg.train.optim.schedule) == (1e-5, "cosine")
    tag_only = load_config(preset="zeta", stage="tag")  # the tag stage alone needs no base
    assert tag_only.tag.quality.normalize == "rating_year"
