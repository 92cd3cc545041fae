"""Seeded selection: the chosen posts and the per-filter counts equal an independent
recomputation (sqlite3 + NumPy) on the synthetic danbooru2023 database."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kohaku.sample import SampleConfig, run_sample
from kohaku.stage import Manifest
from tests.sample.reference import (
    NO_FILTERS,
    Metadata,
    chosen_by_range,
    expected_selection,
    write_metadata,
)

RANGES = [
    {"start": 0, "end": 1200, "count": 80},
    {"start": 1200, "end": 2400, "count": 60},
    {"start": 2400, "count": "all"},
]
ALL_FILTERS = {
    "ratings": ["general", "sensitive", "questionable"],
    "min_pixels": 1_000_000,
    "max_pixels": 12_000_000,
    "min_aspect": 0.4,
    "max_aspect": 1.2,
    "min_score": 1,
    "required_tags": ["1girl"],
    "excluded_tags": ["1boy", "monochrome"],
}


def run(cfg: SampleConfig, run_dir: Path) -> tuple[Manifest, pl.DataFrame]:
    manifest = run_sample(cfg, run_dir)
    return manifest, pl.read_parquet(run_dir / "sample" / "posts.parquet")


def check_against_reference(meta: Metadata, cfg: SampleConfig, run_dir: Path) -> list:
    manifest, posts = run(cfg, run_dir)
    expected = expected_selection(meta, cfg)
    assert chosen_by_range(posts, len(cfg.ranges)) == [e.chosen for e in expected]
    for rec, exp, rng in zip(manifest.counts["ranges"], expected, cfg.ranges, strict=True):
        assert rec["in_range"] == exp.in_range
        assert rec["eligible"] == exp.eligible
        assert rec["chosen"] == len(exp.chosen)
        assert rec["rejected_by"] == exp.rejected_by
        assert rec["requested"] == rng.count
        assert rec["range"] == rng.label()
    assert manifest.counts["posts"] == posts.height == sum(len(e.chosen) for e in expected)
    return expected


@pytest.mark.parametrize("timing", ["before_sampling", "after_sampling"])
def test_selection_with_every_filter_matches_reference(
    synth_db: Path, meta: Metadata, tmp_path: Path, timing: str
) -> None:
    cfg = SampleConfig(
        source=synth_db, seed=3, ranges=RANGES, filters=ALL_FILTERS, filter_timing=timing
    )
    expected = check_against_reference(meta, cfg, tmp_path)
    assert all(len(exp.rejected_by) == 12 for exp in expected)
    if timing == "before_sampling":  # every filter rejects some, not all, posts of a range
        assert [len(e.chosen) for e in expected[:2]] == [80, 60]
        for exp in expected:
            assert all(0 < n < exp.in_range for n in exp.rejected_by.values()), exp.rejected_by
    else:  # drawn first, then filtered: rejections are counted among the drawn posts
        for exp, r in zip(expected[:2], RANGES[:2], strict=False):
            assert 0 < len(exp.chosen) < r["count"]
            assert all(n <= r["count"] for n in exp.rejected_by.values())


@pytest.mark.parametrize("timing", ["before_sampling", "after_sampling"])
def test_default_filters_match_reference(
    synth_parquet: Path, meta: Metadata, tmp_path: Path, timing: str
) -> None:
    cfg = SampleConfig(source=synth_parquet, seed=0, ranges=RANGES, filter_timing=timing)
    expected = check_against_reference(meta, cfg, tmp_path)
    assert set(expected[0].rejected_by) == {"deleted", "banned", "restricted", "file_ext"}


ONE_FILTER = {
    "deleted": {"drop_deleted": True},
    "banned": {"drop_banned": True},
    "restricted": {"drop_restricted": True},
    "file_ext": {"image_exts": ["jpg", "png"]},
    "rating": {"ratings": ["general", "explicit"]},
    "min_pixels": {"min_pixels": 2_000_000},
    "max_pixels": {"max_pixels": 3_000_000},
    "min_aspect": {"min_aspect": 0.7},
    "max_aspect": {"max_aspect": 0.75},
    "min_score": {"min_score": 5},
    "required_tags": {"required_tags": ["1girl", "solo"]},
    "excluded_tags": {"excluded_tags": ["long_hair", "highres"]},
}


@pytest.mark.parametrize("name", list(ONE_FILTER))
def test_each_filter_rejects_exactly_the_right_posts(
    synth_parquet: Path, meta: Metadata, tmp_path: Path, name: str
) -> None:
    """One filter at a time (after_sampling: see the every-filter test above)."""
    cfg = SampleConfig(
        source=synth_parquet,
        seed=21,
        ranges=[{"start": 0, "end": 1700, "count": 150}, {"start": 1700, "count": "all"}],
        filters={**NO_FILTERS, **ONE_FILTER[name]},
    )
    expected = check_against_reference(meta, cfg, tmp_path)
    for exp in expected:
        active = {k for k, v in exp.rejected_by.items() if v}
        assert active == {name}, exp.rejected_by
    # the open-ended range takes everything: its chosen posts are exactly those in the
    # range that the filter lets through
    rejected = expected[1].in_range - len(expected[1].chosen)
    assert rejected == expected[1].rejected_by[name] > 0


def test_no_filter_active_but_extensions(
    synth_parquet: Path, meta: Metadata, tmp_path: Path
) -> None:
    cfg = SampleConfig(
        source=synth_parquet, ranges=[{"start": 0, "count": 500}], filters=NO_FILTERS
    )
    expected = check_against_reference(meta, cfg, tmp_path)
    assert expected[0].rejected_by == {"file_ext": 0}


# --- filter edges, on a hand-made metadata folder ---------------------------------------

EDGE_POSTS = [
    {"id": 1},  # 1000x1000, score 10, jpg: passes everything below
    {"id": 2, "image_width": 999},  # 999,000 px, aspect 0.999
    {"id": 3, "image_width": 2000, "image_height": 2000},  # 4,000,000 px
    {"id": 4, "image_width": 2001, "image_height": 2000},
    {"id": 5, "image_width": 500, "image_height": 1000},  # aspect 0.5
    {"id": 6, "image_width": 499, "image_height": 1000},
    {"id": 7, "image_width": 2000, "image_height": 1000},  # aspect 2.0
    {"id": 8, "image_width": 2001, "image_height": 1000},
    {"id": 9, "image_height": 0},  # no aspect ratio
    {"id": 10, "score": 3},
    {"id": 11, "score": 2},
    {"id": 12, "score": None},
    {"id": 13, "md5": None},
    {"id": 14, "md5": ""},
    {"id": 15, "file_url": None},
    {"id": 16, "file_url": ""},
    {"id": 17, "file_ext": "PNG"},
    {"id": 18, "file_ext": "gif"},
    {"id": 19, "file_ext": "webm"},
    {"id": 20, "is_deleted": 1},
    {"id": 21, "is_banned": 1},
    {"id": 22, "rating": 3},
    {"id": 23, "rating": None},
    {"id": 24, "file_ext": "jpeg"},
]
EDGE_TAGS = [(1, "solo", 0), (2, "1girl", 0), (3, "monochrome", 0), (4, "unused", 0)]
EDGE_RELATIONS = [(1, 1), (1, 2), (2, 1), (3, 2), (4, 3), (5, 1), (5, 2), (5, 3)]
EVERYTHING_ELSE = {**NO_FILTERS, "image_exts": ["jpg", "jpeg", "png", "gif", "webm"]}


ALL_EDGE_IDS = {p["id"] for p in EDGE_POSTS}


@pytest.mark.parametrize(
    "filters, rejected",
    [
        ({"min_pixels": 1_000_000}, {"min_pixels": {2, 5, 6, 9}}),
        ({"max_pixels": 4_000_000}, {"max_pixels": {4}}),
        ({"min_aspect": 0.5}, {"min_aspect": {6, 9}}),
        ({"max_aspect": 2.0}, {"max_aspect": {8, 9}}),
        (
            {"min_aspect": 1.0, "max_aspect": 1.0},
            {"min_aspect": {2, 5, 6, 9}, "max_aspect": {4, 7, 8, 9}},
        ),
        ({"min_score": 3}, {"min_score": {11, 12}}),
        ({"min_score": 0}, {"min_score": {12}}),
        ({"min_score": -100}, {"min_score": {12}}),
        ({"drop_restricted": True}, {"restricted": {13, 14, 15, 16}}),
        ({"image_exts": ["jpg"]}, {"file_ext": {17, 18, 19, 24}}),
        ({"image_exts": ["JPG", "png"]}, {"file_ext": {18, 19, 24}}),
        ({"image_exts": ["png", "jpeg", "jpg", "webm"]}, {"file_ext": {18}}),
        ({"drop_deleted": True}, {"deleted": {20}}),
        ({"drop_banned": True}, {"banned": {21}}),
        ({"ratings": ["general"]}, {"rating": {22, 23}}),
        ({"ratings": ["explicit"]}, {"rating": ALL_EDGE_IDS - {22}}),
        ({"required_tags": ["solo"]}, {"required_tags": ALL_EDGE_IDS - {1, 2, 5}}),
        ({"required_tags": ["solo", "1girl"]}, {"required_tags": ALL_EDGE_IDS - {1, 5}}),
        ({"required_tags": ["solo", "solo"]}, {"required_tags": ALL_EDGE_IDS - {1, 2, 5}}),
        ({"excluded_tags": ["monochrome"]}, {"excluded_tags": {4, 5}}),
        ({"excluded_tags": ["monochrome", "1girl"]}, {"excluded_tags": {1, 3, 4, 5}}),
        ({"excluded_tags": ["unused"]}, {}),
    ],
)
def test_filter_edges(tmp_path: Path, filters: dict, rejected: dict[str, set[int]]) -> None:
    source = write_metadata(tmp_path / "meta", EDGE_POSTS, EDGE_TAGS, EDGE_RELATIONS)
    cfg = SampleConfig(source=source, filters={**EVERYTHING_ELSE, **filters})
    manifest, posts = run(cfg, tmp_path / "run")
    out = set().union(*rejected.values())
    assert set(posts["id"]) == ALL_EDGE_IDS - out
    counts = manifest.counts["ranges"][0]
    assert counts["in_range"] == len(ALL_EDGE_IDS)
    assert counts["eligible"] == counts["chosen"] == len(ALL_EDGE_IDS) - len(out)
    assert {k: v for k, v in counts["rejected_by"].items() if v} == {
        k: len(v) for k, v in rejected.items()
    }


def test_missing_extension_and_rating(tmp_path: Path) -> None:
    """A post without file_ext is never an image; without rating it passes only when no
    rating filter is set."""
    posts = [
        {"id": 1},
        {"id": 2, "file_ext": None},
        {"id": 3, "file_ext": ""},
        {"id": 4, "rating": None},
    ]
    source = write_metadata(tmp_path / "meta", posts)
    manifest, chosen = run(SampleConfig(source=source), tmp_path / "all")
    assert chosen["id"].to_list() == [1, 4]
    assert manifest.counts["ranges"][0]["rejected_by"]["file_ext"] == 2
    cfg = SampleConfig(source=source, filters={"ratings": ["general", "sensitive"]})
    manifest, chosen = run(cfg, tmp_path / "rated")
    assert chosen["id"].to_list() == [1]
    assert manifest.counts["ranges"][0]["rejected_by"]["rating"] == 1


@pytest.mark.parametrize(
    "ranges, chosen",
    [
        ([{"start": 10, "end": 20}], [[10, 19]]),
        ([{"start": 0, "end": 10}, {"start": 10, "end": 21}], [[9], [10, 19, 20]]),
        ([{"start": 21}], [[2**31, 2**32 - 1]]),
        ([{"start": 2**32 - 1}], [[2**32 - 1]]),
        ([{"start": 0, "end": 2**32}], [[9, 10, 19, 20, 2**31, 2**32 - 1]]),
        ([{"start": 20, "end": 21}, {"start": 9, "end": 10}], [[20], [9]]),
    ],
)
def test_range_bounds_start_inclusive_end_exclusive(
    tmp_path: Path, ranges: list[dict], chosen: list[list[int]]
) -> None:
    ids = [9, 10, 19, 20, 2**31, 2**32 - 1]
    source = write_metadata(tmp_path / "meta", [{"id": i} for i in ids])
    _, posts = run(SampleConfig(source=source, ranges=ranges), tmp_path / "run")
    assert chosen_by_range(posts, len(ranges)) == chosen


def test_range_without_posts_is_reported_not_fatal(tmp_path: Path) -> None:
    source = write_metadata(tmp_path / "meta", [{"id": i} for i in (1, 2, 3)])
    ranges = [{"start": 0, "end": 10}, {"start": 100, "end": 200}]
    manifest, posts = run(SampleConfig(source=source, ranges=ranges), tmp_path / "run")
    assert posts["id"].to_list() == [1, 2, 3]
    empty = manifest.counts["ranges"][1]
    assert (empty["in_range"], empty["eligible"], empty["chosen"]) == (0, 0, 0)
    assert empty["rejected_by"] == {"deleted": 0, "banned": 0, "restricted": 0, "file_ext": 0}


def test_seed_changes_the_selection(synth_parquet: Path, meta: Metadata, tmp_path: Path) -> None:
    ranges = [{"start": 0, "count": 200}]
    picks = []
    for seed in (0, 1, 2**32):
        cfg = SampleConfig(source=synth_parquet, seed=seed, ranges=ranges)
        check_against_reference(meta, cfg, tmp_path / str(seed))
        picks.append(set(pl.read_parquet(tmp_path / str(seed) / "sample/posts.parquet")["id"]))
    assert all(len(p) == 200 for p in picks)
    assert len(picks[0] & picks[1]) < 100 and len(picks[0] & picks[2]) < 100
