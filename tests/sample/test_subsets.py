"""Subsets (ranges with a tag query: any / required / excluded tags) on the synthetic
database: each subset's draw, the post each overlap is written under, its repeats and the
manifest counts equal an independent recomputation (tests/sample/reference.py); adding a
subset never changes another's draw; the tag stage reads the output unchanged."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from kohaku.errors import ConfigError
from kohaku.sample import SampleConfig, run_sample
from kohaku.tag import TagConfig, run_tag
from tests.sample.reference import Metadata, expected_selection, write_metadata, written_under


def top_artists(meta: Metadata, n: int) -> list[str]:
    """The `n` artist tags (type 1) on the most posts, by name among equals."""
    uses = Counter(t for tags in meta.tags_of.values() for t in tags if meta.tags[t][1] == 1)
    ranked = sorted(uses, key=lambda t: (-uses[t], meta.tags[t][0]))
    return [meta.tags[t][0] for t in ranked[:n]]


def rev2_like(source: Path, meta: Metadata, timing: str = "before_sampling") -> SampleConfig:
    """Two plain ranges and three subsets that overlap them and each other."""
    return SampleConfig(
        source=source, seed=5, filter_timing=timing, on_short_range="take_all",
        filters={"min_score": 1, "excluded_tags": ["1boy"]},
        ranges=[
            {"start": 0, "end": 1500, "count": 300},
            {"start": 1500, "count": 400, "repeats": 2},
            {"name": "series", "any_tags": ["touhou", "kantai_collection"], "count": 60,
             "repeats": 2},
            {"name": "artists", "any_tags": top_artists(meta, 12), "repeats": 4},
            {"name": "girls", "start": 1000, "end": 3000, "required_tags": ["1girl", "solo"],
             "excluded_tags": ["monochrome"], "count": 150, "repeats": 2},
        ],
    )  # fmt: skip


@pytest.fixture(scope="module", params=["before_sampling", "after_sampling"])
def built(request, synth_parquet: Path, meta: Metadata, tmp_path_factory):
    cfg = rev2_like(synth_parquet, meta, request.param)
    run_dir = tmp_path_factory.mktemp("subsets")
    manifest = run_sample(cfg, run_dir)
    return cfg, run_dir, manifest, pl.read_parquet(run_dir / "sample" / "posts.parquet")


def test_posts_and_their_subsets_match_reference(built, meta: Metadata) -> None:
    cfg, _, manifest, posts = built
    expected = expected_selection(meta, cfg)
    owner = written_under(cfg, expected)
    assert posts["id"].to_list() == sorted(owner)  # each chosen post once, in id order
    got = {i: (k, s, n) for i, k, s, n in posts.select("id", "range_idx", "subset", "repeats")
           .iter_rows()}  # fmt: skip
    assert got == {i: (k, cfg.ranges[k].key, cfg.ranges[k].repeats) for i, k in owner.items()}
    assert manifest.counts["posts"] == posts.height
    assert manifest.counts["images_per_epoch"] == posts["repeats"].sum()
    drawn = Counter(i for e in expected for i in e.chosen)
    assert manifest.counts["overlap_posts"] == sum(1 for n in drawn.values() if n > 1) > 0


def test_manifest_counts_per_subset(built, meta: Metadata) -> None:
    cfg, _, manifest, _ = built
    expected = expected_selection(meta, cfg)
    owner = written_under(cfg, expected)
    drawn = Counter(i for e in expected for i in e.chosen)
    for k, (rec, exp, rng) in enumerate(zip(manifest.counts["ranges"], expected, cfg.ranges,
                                            strict=True)):  # fmt: skip
        assert (rec["name"], rec["range"], rec["requested"]) == (rng.key, rng.label(), rng.count)
        assert (rec["in_range"], rec["eligible"]) == (exp.in_range, exp.eligible)
        assert rec["rejected_by"] == exp.rejected_by
        assert rec["chosen"] == len(exp.chosen) > 0
        assert rec["overlap"] == sum(1 for i in exp.chosen if drawn[i] > 1)
        assert rec["written"] == sum(1 for j in owner.values() if j == k)
        assert rec["repeats"] == rng.repeats
        assert rec["images_per_epoch"] == len(exp.chosen) * rng.repeats
    artists = manifest.counts["ranges"][3]
    assert artists["written"] == artists["chosen"]  # the most repeated subset keeps all its posts


def test_tag_stage_reads_the_subsets_output(built) -> None:
    _, run_dir, _, posts = built
    tag = run_tag(TagConfig(), run_dir)
    captions = pl.read_parquet(run_dir / "tag" / tag.outputs["captions"])
    assert captions["id"].to_list() == posts["id"].to_list()


def written(run_dir: Path, subset: str) -> list[int]:
    posts = pl.read_parquet(run_dir / "sample" / "posts.parquet")
    return posts.filter(pl.col("subset") == subset)["id"].to_list()


def test_adding_a_subset_keeps_the_others_draws(
    synth_parquet: Path, meta: Metadata, tmp_path: Path
) -> None:
    """A subset's draw depends on the seed, its name and its query only (the most repeated
    one is written whole, so its posts in posts.parquet are its draw)."""
    series = {"name": "series", "any_tags": ["touhou", "kantai_collection"], "count": 40,
              "repeats": 5}  # fmt: skip
    alone = SampleConfig(source=synth_parquet, seed=2, ranges=[series])
    run_sample(alone, tmp_path / "alone")
    more = SampleConfig(source=synth_parquet, seed=2, ranges=[
        {"name": "artists", "any_tags": top_artists(meta, 12)}, series, {"start": 0, "count": 900}
    ])  # fmt: skip
    run_sample(more, tmp_path / "more")
    assert written(tmp_path / "alone", "series") == written(tmp_path / "more", "series")
    assert len(written(tmp_path / "alone", "series")) == 40


def test_subsets_draw_by_name_and_plain_ranges_by_seed(synth_parquet: Path, tmp_path: Path) -> None:
    """Two subsets with the same query but other names draw other posts; naming a plain
    range keeps today's draw."""
    query = {"any_tags": ["original", "touhou"], "count": 60}
    cfg = SampleConfig(source=synth_parquet, ranges=[{"name": "a", **query},
                                                     {"name": "b", **query}])  # fmt: skip
    manifest = run_sample(cfg, tmp_path / "ab")
    a, b = manifest.counts["ranges"]
    assert a["in_range"] == b["in_range"] > 200 and a["chosen"] == b["chosen"] == 60
    assert a["overlap"] == b["overlap"] < 30  # independent draws, not the same 60 posts
    plain = [{"start": 0, "end": 2000, "count": 300}]
    run_sample(SampleConfig(source=synth_parquet, ranges=plain), tmp_path / "plain")
    named = [{**plain[0], "name": "old"}]
    run_sample(SampleConfig(source=synth_parquet, ranges=named), tmp_path / "named")
    assert written(tmp_path / "plain", "[0, 2000)") == written(tmp_path / "named", "old")


# --- query semantics and overlaps, on a hand-made metadata folder ------------------------

TAGS = [(1, "solo", 0), (2, "1girl", 0), (3, "monochrome", 0), (4, "artist_a", 1),
        (5, "series_b", 3)]  # fmt: skip
TAGS_OF = {1: [1, 2, 4], 2: [1, 5], 3: [2, 4, 3], 4: [5, 3], 5: [4, 5], 6: [], 7: [2],
           8: [4], 9: [5, 2]}  # fmt: skip
RELATIONS = [(post, tag) for post, tags in TAGS_OF.items() for tag in tags]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return write_metadata(tmp_path / "meta", [{"id": i} for i in TAGS_OF], TAGS, RELATIONS)


@pytest.mark.parametrize(
    "query, members",
    [
        ({"any_tags": ["artist_a", "series_b"]}, {1, 2, 3, 4, 5, 8, 9}),
        ({"any_tags": ["artist_a", "artist_a"]}, {1, 3, 5, 8}),
        ({"any_tags": ["artist_a"], "excluded_tags": ["monochrome"]}, {1, 5, 8}),
        ({"required_tags": ["1girl"], "any_tags": ["artist_a", "series_b"]}, {1, 3, 9}),
        ({"required_tags": ["solo", "1girl"]}, {1}),
        ({"excluded_tags": ["monochrome"]}, {1, 2, 5, 6, 7, 8, 9}),
        ({"any_tags": ["artist_a"], "start": 3, "end": 6}, {3, 5}),
    ],
)
def test_tag_queries(small: Path, tmp_path: Path, query: dict, members: set[int]) -> None:
    cfg = SampleConfig(source=small, ranges=[{"name": "q", **query}])
    manifest = run_sample(cfg, tmp_path / "run")
    assert set(written(tmp_path / "run", "q")) == members
    rec = manifest.counts["ranges"][0]
    assert rec["in_range"] == rec["chosen"] == rec["written"] == len(members)


def test_overlaps_go_to_the_most_repeated_subset(small: Path, tmp_path: Path) -> None:
    cfg = SampleConfig(source=small, ranges=[
        {"start": 0, "end": 100},
        {"name": "artist's", "any_tags": ["artist_a"], "repeats": 2},  # a quote in a name
        {"name": "series", "any_tags": ["series_b"], "repeats": 3},
        {"name": "girls", "any_tags": ["1girl"], "repeats": 3},  # ties with series: listed later
    ])  # fmt: skip
    manifest = run_sample(cfg, tmp_path / "run")
    posts = pl.read_parquet(tmp_path / "run" / "sample" / "posts.parquet")
    assert dict(posts.select("id", "subset").iter_rows()) == {
        1: "girls", 2: "series", 3: "girls", 4: "series", 5: "series", 6: "[0, 100)",
        7: "girls", 8: "artist's", 9: "series"}  # fmt: skip
    counts = {r["name"]: (r["chosen"], r["overlap"], r["written"], r["images_per_epoch"])
              for r in manifest.counts["ranges"]}  # fmt: skip
    assert counts == {"[0, 100)": (9, 8, 1, 9), "artist's": (4, 4, 1, 8),
                      "series": (4, 4, 4, 12), "girls": (4, 4, 3, 12)}  # fmt: skip
    assert manifest.counts["overlap_posts"] == 8
    assert manifest.counts["images_per_epoch"] == posts["repeats"].sum() == 1 + 2 + 3 * 7


def test_unknown_tags_in_several_lists_are_one_error(small: Path, tmp_path: Path) -> None:
    cfg = SampleConfig(source=small, filters={"excluded_tags": ["monochrom"]}, ranges=[
        {"start": 0, "end": 5},
        {"name": "artists", "any_tags": ["artist_a", "artist_zz"], "excluded_tags": ["solo"]},
        {"name": "series", "required_tags": ["series b"]},
    ])  # fmt: skip
    with pytest.raises(ConfigError) as err:
        run_sample(cfg, tmp_path / "run")
    assert str(err.value) == (
        "sample.filters.excluded_tags: unknown danbooru tags ['monochrom']; "
        "sample.ranges.1.any_tags: unknown danbooru tags ['artist_zz']; "
        "sample.ranges.2.required_tags: unknown danbooru tags ['series b'] "
        "(use the danbooru spelling, with underscores)"
    )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_short_subset_is_named(small: Path, tmp_path: Path) -> None:
    cfg = SampleConfig(source=small, ranges=[{"name": "artist", "any_tags": ["artist_a"],
                                              "count": 5}])  # fmt: skip
    with pytest.raises(ConfigError, match=r"subset 'artist' \[0, end\) holds 4 posts, fewer "
                       "than the 5 requested"):  # fmt: skip
        run_sample(cfg, tmp_path / "run")
