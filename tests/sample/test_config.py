"""SampleConfig validation: bad configs fail when the config is built, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kohaku.sample.config import FilterConfig, IdRange, SampleConfig


def config(**fields) -> SampleConfig:
    return SampleConfig(source=Path("meta.db"), **fields)


def test_defaults() -> None:
    cfg = config()
    assert cfg.seed == 0 and cfg.filter_timing == "before_sampling"
    assert cfg.on_short_range == "error"
    assert [(r.start, r.end, r.count) for r in cfg.ranges] == [(0, None, "all")]
    assert cfg.filters.drop_deleted and cfg.filters.drop_banned and cfg.filters.drop_restricted
    assert set(cfg.filters.image_exts) == {"jpg", "jpeg", "png", "webp", "avif"}


@pytest.mark.parametrize(
    "ranges",
    [
        [{"start": 0, "end": 10}, {"start": 5, "end": 20}],
        [{"start": 5, "end": 20}, {"start": 0, "end": 6}],  # given out of order
        [{"start": 100}, {"start": 200, "end": 300}],  # open end swallows the next range
        [{"start": 0, "end": 10}, {"start": 0, "end": 10}],
        [{"start": 0, "end": 100}, {"start": 10, "end": 20}],  # nested
    ],
)
def test_overlapping_ranges_rejected(ranges: list[dict]) -> None:
    with pytest.raises(ValidationError, match="overlap"):
        config(ranges=ranges)


@pytest.mark.parametrize(
    "ranges",
    [
        [{"start": 0, "end": 10}, {"start": 10, "end": 20}],  # end is exclusive
        [{"start": 10, "end": 20}, {"start": 0, "end": 10}, {"start": 20}],
        [{"start": 0, "end": 1}],
    ],
)
def test_adjacent_ranges_accepted(ranges: list[dict]) -> None:
    assert len(config(ranges=ranges).ranges) == len(ranges)


@pytest.mark.parametrize("start, end", [(5, 5), (10, 4), (1, 1)])
def test_empty_range_rejected(start: int, end: int) -> None:
    with pytest.raises(ValidationError, match="end must be > start"):
        IdRange(start=start, end=end)


@pytest.mark.parametrize("count", [0, -1])
def test_count_below_one_rejected(count: int) -> None:
    with pytest.raises(ValidationError, match="count"):
        IdRange(start=0, end=10, count=count)


@pytest.mark.parametrize("count", ["some", "ALL", 1.5])
def test_count_must_be_int_or_all(count) -> None:
    with pytest.raises(ValidationError):
        IdRange(count=count)


@pytest.mark.parametrize(
    "fields", [{"start": -1}, {"start": 2**32}, {"end": 2**32 + 2}, {"end": 0}]
)
def test_range_bounds_limited_to_32_bit_ids(fields: dict) -> None:
    with pytest.raises(ValidationError):
        IdRange(**fields)


def test_range_stop_and_label() -> None:
    assert IdRange(start=3).stop == 2**32
    assert IdRange(start=3).label() == "[3, end)"
    assert IdRange(start=3, end=2**32).label() == "[3, 4294967296)"


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"min_pixels": 2_000_000, "max_pixels": 1_000_000}, "min_pixels"),
        ({"min_aspect": 2.0, "max_aspect": 0.5}, "min_aspect"),
    ],
)
def test_min_above_max_rejected(fields: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=f"filters.{field}.*larger than"):
        FilterConfig(**fields)


def test_min_equal_max_accepted() -> None:
    f = FilterConfig(min_pixels=10, max_pixels=10, min_aspect=1.0, max_aspect=1.0)
    assert f.min_pixels == f.max_pixels == 10


def test_tag_both_required_and_excluded_rejected() -> None:
    with pytest.raises(ValidationError, match="solo"):
        FilterConfig(required_tags=["solo", "1girl"], excluded_tags=["solo"])


@pytest.mark.parametrize(
    "fields",
    [
        {"image_exts": []},
        {"ratings": []},
        {"ratings": ["safe"]},  # the pre-2022 name is not a rating here
        {"min_pixels": 0},
        {"max_pixels": -5},
        {"min_aspect": 0},
        {"max_aspect": -1.0},
    ],
)
def test_bad_filter_values_rejected(fields: dict) -> None:
    with pytest.raises(ValidationError):
        FilterConfig(**fields)


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_seed_out_of_range_rejected(seed: int) -> None:
    with pytest.raises(ValidationError, match="seed"):
        config(seed=seed)


def test_seed_above_32_bits_accepted() -> None:
    assert config(seed=2**40 + 1).seed == 2**40 + 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: config(sead=1),
        lambda: config(filters={"drop_deletd": True}),
        lambda: config(ranges=[{"start": 0, "cnt": 5}]),
        lambda: IdRange(start=0, stop=5),
    ],
)
def test_unknown_fields_rejected(make) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        make()


@pytest.mark.parametrize(
    "fields",
    [{"source_format": "csv"}, {"filter_timing": "during"}, {"on_short_range": "skip"}],
)
def test_bad_choices_rejected(fields: dict) -> None:
    with pytest.raises(ValidationError):
        config(**fields)


def test_config_is_frozen() -> None:
    cfg = config()
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]


# --- subsets: ranges with a tag query ---------------------------------------------------

SUBSET = {"name": "artists", "any_tags": ["wlop", "ask_(askzy)"]}


def test_range_defaults_and_subset_properties() -> None:
    plain, subset = IdRange(start=5, end=9), IdRange(**SUBSET, repeats=3, count=10)
    assert (plain.repeats, plain.any_tags, plain.required_tags, plain.excluded_tags) == (
        1, None, None, None)  # fmt: skip
    assert not plain.tagged and plain.key == "[5, 9)"
    assert subset.tagged and subset.key == "artists" and subset.repeats == 3
    assert not config().has_subsets and config(ranges=[SUBSET]).has_subsets


@pytest.mark.parametrize("field", ["any_tags", "required_tags", "excluded_tags"])
def test_empty_tag_list_rejected(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field}\n.*an empty tag list"):
        config(ranges=[{"name": "x", field: []}])


def test_tag_query_needs_a_name() -> None:
    with pytest.raises(ValidationError, match=r"range \[0, end\) has a tag query: give it a"):
        IdRange(any_tags=["touhou"])


@pytest.mark.parametrize(
    "ranges",
    [
        [SUBSET, {**SUBSET, "any_tags": ["touhou"]}],
        [{"start": 0, "end": 10}, {**SUBSET, "name": "[0, 10)"}],  # a plain range's label
        [{"start": 0, "end": 10, "name": "a"}, {"start": 10, "name": "a"}],
    ],
)
def test_duplicate_range_names_rejected(ranges: list[dict]) -> None:
    with pytest.raises(ValidationError, match="range names given more than once"):
        config(ranges=ranges)


@pytest.mark.parametrize("repeats", [0, -2])
def test_repeats_below_one_rejected(repeats: int) -> None:
    with pytest.raises(ValidationError, match="repeats"):
        IdRange(**SUBSET, repeats=repeats)


def test_subset_count_below_one_rejected() -> None:
    with pytest.raises(ValidationError, match="count 0 must be >= 1"):
        IdRange(**SUBSET, count=0)


def test_subsets_may_overlap_anything_plain_ranges_may_not() -> None:
    ok = config(ranges=[{"start": 0, "end": 100}, {"start": 100}, SUBSET,
                        {**SUBSET, "name": "more", "start": 50, "end": 60}])  # fmt: skip
    assert len(ok.ranges) == 4
    with pytest.raises(ValidationError, match=r"id ranges \[0, 100\) and \[50, end\) overlap"):
        config(ranges=[SUBSET, {"start": 0, "end": 100}, {"start": 50}])


@pytest.mark.parametrize("query", [{"any_tags": ["solo"]}, {"required_tags": ["1girl", "solo"]}])
def test_tag_both_wanted_and_excluded_in_a_subset_rejected(query: dict) -> None:
    with pytest.raises(ValidationError, match=r"wanted and excluded: \['solo'\]"):
        IdRange(name="x", excluded_tags=["solo"], **query)


def test_no_ranges_rejected_with_a_hint() -> None:
    with pytest.raises(ValidationError, match=r"sample.ranges is empty.*\[\[sample.ranges\]\]"):
        config(ranges=[])
