"""The tag stage end to end on a real sample stage (synthetic danbooru2023 DB): captions
recomputed independently from the SQLite rows, manifest, reuse, missing input."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kohaku.config import preset_dict
from kohaku.errors import ConfigError, InputError
from kohaku.sample import SampleConfig, run_sample
from kohaku.stage import read_manifest
from kohaku.tag import TAG_VERSION, TagConfig, run_tag
from kohaku.tag.captions import lay_out
from kohaku.tag.quality import year_spans
from tests.sample.reference import Metadata, read_metadata
from tests.tag.stage_files import write_sample_stage

PERCENTILES = [95, 85, 75, 50, 25, 10]
QUALITY = [
    "masterpiece",
    "best quality",
    "great quality",
    "good quality",
    "normal quality",
    "low quality",
    "worst quality",
]
COUNT_TAGS = {
    "1girl",
    "2girls",
    "3girls",
    "4girls",
    "5girls",
    "6+girls",
    "multiple_girls",
    "1boy",
    "2boys",
    "3boys",
    "4boys",
    "5boys",
    "6+boys",
    "multiple_boys",
    "male_focus",
    "1other",
    "2others",
    "3others",
    "4others",
    "5others",
    "6+others",
    "multiple_others",
    "no_humans",
}
META_DROP = [
    "(medium)",
    "commentary",
    "bad",
    "translat",
    "request",
    "mismatch",
    "revision",
    "audio",
    "video",
]
RATING_TAGS = [["safe"], ["sensitive"], ["nsfw"], ["nsfw", "explicit"]]
GROUP_OF_TYPE = {0: "general", 1: "artist", 2: "character", 3: "copyright", 4: "meta"}


@pytest.fixture(scope="module")
def meta(synth_db: Path) -> Metadata:
    return read_metadata(synth_db)


@pytest.fixture(scope="module")
def sampled(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sample stage: 900 of the posts in [0, 2500) and all after."""
    run_dir = tmp_path_factory.mktemp("sampled")
    cfg = SampleConfig(
        source=synth_db, seed=4, ranges=[{"start": 0, "end": 2500, "count": 900}, {"start": 2500}]
    )
    run_sample(cfg, run_dir)
    return run_dir


@pytest.fixture
def run_dir(sampled: Path, tmp_path: Path) -> Path:
    """A run dir of its own holding a copy of the sample stage."""
    shutil.copytree(sampled / "sample", tmp_path / "sample")
    return tmp_path


def captions(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "tag" / "captions.parquet")


def caption_text(name: str) -> str:
    return name if len(name) <= 3 else name.replace("_", " ")


def expected_groups(meta: Metadata, relations: list[tuple]) -> dict[str, list[str]]:
    """Tag groups of one post from its posttagrelation rows."""
    out = {g: [] for g in ("count", "character", "copyright", "artist", "general", "meta")}
    for _, _, tag_id in sorted(relations):
        name, kind = meta.tags[tag_id]
        if not name.strip():
            continue
        if kind == 4 and any(k in name for k in META_DROP):
            continue
        if kind == 1 and "banned" in name:
            continue
        group = "count" if kind == 0 and name in COUNT_TAGS else GROUP_OF_TYPE[kind]
        out[group].append(caption_text(name))
    return out


def expected_thresholds(meta: Metadata) -> dict[int, np.ndarray]:
    rating, fav = meta.posts["rating"], meta.posts["fav_count"]
    return {
        r: np.percentile(fav[rating == r], PERCENTILES, method="inverted_cdf") for r in range(4)
    }


def expected_quality(thresholds: dict[int, np.ndarray], rating: int, fav: int) -> str:
    return QUALITY[len(PERCENTILES) - int((fav > thresholds[rating]).sum())]


def expected_date(year: int) -> str:
    spans = [
        (2005, 2010, "old"),
        (2011, 2014, "early"),
        (2015, 2017, "mid"),
        (2018, 2020, "recent"),
        (2021, 9999, "newest"),
    ]
    return next(tag for lo, hi, tag in spans if lo <= year <= hi)


def test_epsilon_captions_match_an_independent_recomputation(run_dir: Path, meta: Metadata) -> None:
    manifest = run_tag(TagConfig(), run_dir)
    got = lay_out(captions(run_dir).lazy(), "epsilon").collect()
    assert got["caption"].equals(captions(run_dir)["caption"])
    posts = pl.read_parquet(run_dir / "sample" / "posts.parquet")
    assert got["id"].to_list() == posts["id"].to_list()  # one caption per post, by id
    thresholds = expected_thresholds(meta)
    index = {int(i): k for k, i in enumerate(meta.ids)}
    relations: dict[int, list[tuple]] = {}
    for rel in meta.relations:
        relations.setdefault(rel[1], []).append(rel)
    for row in got.iter_rows(named=True):
        k = index[row["id"]]
        rating, fav = int(meta.posts["rating"][k]), int(meta.posts["fav_count"][k])
        groups = expected_groups(meta, relations[row["id"]])
        quality = expected_quality(thresholds, rating, fav)
        date = expected_date(int(meta.posts["created_at"][k][:4]))
        assert {g: row[g] for g in groups} == groups
        assert (row["quality"], row["date"], row["rating_tags"]) == (
            quality,
            date,
            RATING_TAGS[rating],
        )
        head = groups["count"] + groups["character"] + groups["copyright"] + groups["artist"]
        tail = [quality, date, *groups["meta"], *RATING_TAGS[rating]]
        assert (row["head"], row["body"], row["tail"]) == (head, groups["general"], tail)
        assert row["caption"] == ", ".join(head + groups["general"] + tail)
    assert manifest.counts["captions"] == got.height == posts.height


def test_quality_is_ranked_within_each_rating(run_dir: Path, meta: Metadata) -> None:
    """Per rating, the share of each quality tag follows the percentiles of the whole
    metadata, not of the pooled ratings."""
    run_tag(TagConfig(quality={"percentiles": [50], "tags": ["upper", "lower"]}), run_dir)
    got = captions(run_dir).join(
        pl.read_parquet(run_dir / "sample" / "posts.parquet").select("id", "rating", "fav_count"),
        on="id",
    )
    for rating in range(4):
        favs = meta.posts["fav_count"][meta.posts["rating"] == rating]
        median = np.percentile(favs, 50, method="inverted_cdf")
        part = got.filter(pl.col("rating") == rating)
        assert part.height > 0
        for fav, tag in part.select("fav_count", "quality").rows():
            assert tag == ("upper" if fav > median else "lower")


def test_manifest_counts(run_dir: Path) -> None:
    manifest = run_tag(TagConfig(layout="delta"), run_dir)
    got = captions(run_dir)
    assert manifest.stage == "tag" and manifest.stage_version == TAG_VERSION
    assert manifest.outputs == {"captions": "captions.parquet"}
    assert read_manifest(run_dir / "tag") == manifest
    sample = read_manifest(run_dir / "sample")
    assert manifest.inputs == {
        "sample": {"config_hash": sample.config_hash, "created_at": sample.created_at}
    }
    counts = manifest.counts
    assert counts["captions"] == got.height
    assert counts["without_tags"] == 0  # every synthetic post has tags
    expected_hist = dict(got.group_by("quality").len().rows())
    assert counts["quality"] == {str(k): v for k, v in expected_hist.items()}
    assert sum(counts["quality"].values()) == got.height
    assert set(counts["quality"]) == set(QUALITY)
    laid = lay_out(got.lazy(), "delta").collect()
    n_tags = laid["head"].list.len() + laid["body"].list.len() + laid["tail"].list.len()
    assert counts["mean_tags"] == round(float(n_tags.mean()), 2)
    assert {"captions", "total"} <= set(manifest.timings)
    assert "polars" in manifest.versions


def test_rerun_reuses_and_changes_rebuild(run_dir: Path, synth_db: Path) -> None:
    first = run_tag(TagConfig(), run_dir)
    again = run_tag(TagConfig(), run_dir)
    assert again == first and read_manifest(run_dir / "tag").created_at == first.created_at

    escaped = run_tag(TagConfig(escape_brackets=True), run_dir)
    assert escaped.created_at > first.created_at and escaped.config_hash != first.config_hash

    # a new sample stage (another seed) makes the tag stage stale
    run_sample(SampleConfig(source=synth_db, seed=5, ranges=[{"start": 3000}]), run_dir)
    rebuilt = run_tag(TagConfig(escape_brackets=True), run_dir)
    assert rebuilt.created_at > escaped.created_at
    assert captions(run_dir)["id"].min() >= 3000


def test_without_sample_stage(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no finished sample stage: run `kohaku sample` first"):
        run_tag(TagConfig(), tmp_path)
    assert not (tmp_path / "tag").exists()


def test_unfinished_sample_stage(run_dir: Path) -> None:
    (run_dir / "sample" / "manifest.json").unlink()
    with pytest.raises(InputError, match="kohaku sample"):
        run_tag(TagConfig(), run_dir)
    assert not (run_dir / "tag").exists()


def test_table_missing_a_rating_fails_and_writes_nothing(run_dir: Path) -> None:
    table = {"general": [6, 5, 4, 3, 2, 1], "sensitive": [6, 5, 4, 3, 2, 1]}
    with pytest.raises(ConfigError, match=r"lacks ratings \['questionable', 'explicit'\]"):
        run_tag(TagConfig(quality={"table": table}), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["sample"]


def test_quality_table_from_config(run_dir: Path) -> None:
    table = {
        r: [40, 30, 20, 10, 5, 1] for r in ("general", "sensitive", "questionable", "explicit")
    }
    run_tag(TagConfig(quality={"table": table}), run_dir)
    got = captions(run_dir).join(
        pl.read_parquet(run_dir / "sample" / "posts.parquet").select("id", "fav_count"), on="id"
    )
    for fav, tag in got.select("fav_count", "quality").rows():
        assert tag == QUALITY[6 - sum(fav > t for t in [40, 30, 20, 10, 5, 1])]


def test_young_posts_and_large_ids_get_no_quality(run_dir: Path, meta: Metadata) -> None:
    cfg = TagConfig(quality={"min_age_days": 400, "max_post_id": 3200})
    run_tag(cfg, run_dir)
    got = captions(run_dir)
    snapshot = max(datetime.fromisoformat(s) for s in meta.posts["created_at"])
    cutoff = snapshot - timedelta(days=400)
    created = {
        int(i): datetime.fromisoformat(s)
        for i, s in zip(meta.ids, meta.posts["created_at"], strict=True)
    }
    none = {i for i in got["id"] if created[i] > cutoff or i > 3200}
    assert 0 < len(none) < got.height
    assert set(got.filter(pl.col("quality").is_null())["id"]) == none
    young = got.filter(pl.col("quality").is_null())
    assert all(q not in c for c in young["caption"] for q in QUALITY)


def test_min_age_at_the_boundary(tmp_path: Path) -> None:
    """A post exactly `min_age_days` old at the snapshot is old enough."""
    posts = [
        {"id": 1, "created_at": "2024-05-02T00:00:00+00:00", "rating": 0, "fav_count": 9},
        {"id": 2, "created_at": "2024-05-02T00:00:00.001+00:00", "rating": 0, "fav_count": 9},
        {"id": 3, "created_at": "2020-01-01T00:00:00+00:00", "rating": 0, "fav_count": 9},
    ]
    write_sample_stage(
        tmp_path,
        posts,
        [(1, "solo", 0)],
        [(1, 1), (2, 1), (3, 1)],
        fav_hist=[(0, 0, 10)],
        snapshot="2024-06-01 00:00:00+00",
    )
    run_tag(TagConfig(quality={"min_age_days": 30}), tmp_path)
    assert captions(tmp_path)["quality"].to_list() == ["masterpiece", None, "masterpiece"]


def test_snapshot_in_another_time_zone(tmp_path: Path) -> None:
    """The snapshot string may carry any offset (DuckDB prints it in the session zone)."""
    posts = [
        {"id": 1, "created_at": "2024-05-01T23:00:00+00:00", "rating": 0, "fav_count": 9},
        {"id": 2, "created_at": "2024-05-02T01:00:00+00:00", "rating": 0, "fav_count": 9},
    ]
    write_sample_stage(
        tmp_path,
        posts,
        [(1, "solo", 0)],
        [(1, 1), (2, 1)],
        fav_hist=[(0, 0, 10)],
        snapshot="2024-06-01 05:30:00+05:30",
    )
    run_tag(TagConfig(quality={"min_age_days": 30}), tmp_path)
    assert captions(tmp_path)["quality"].to_list() == ["masterpiece", None]


def test_posts_without_tags_are_counted(tmp_path: Path) -> None:
    posts = [
        {"id": i, "created_at": "2012-01-01T00:00:00-05:00", "rating": 1, "fav_count": i}
        for i in (1, 2, 3)
    ]
    write_sample_stage(
        tmp_path,
        posts,
        [(1, "solo", 0), (2, "bad_id", 4)],
        [(1, 1), (3, 2)],
        fav_hist=[(1, 1, 1), (1, 2, 1), (1, 3, 1)],
    )
    manifest = run_tag(TagConfig(quality={"percentiles": [50], "tags": ["hi", "lo"]}), tmp_path)
    got = captions(tmp_path)
    assert got["caption"].to_list() == [
        "solo, lo, early, sensitive",
        "lo, early, sensitive",
        "hi, early, sensitive",
    ]
    assert manifest.counts["without_tags"] == 2  # post 3's only tag is dropped
    assert manifest.counts["quality"] == {"hi": 1, "lo": 2}


@pytest.mark.parametrize("batch_posts", [97, 1000])
def test_batches_do_not_change_the_output(run_dir: Path, tmp_path: Path, batch_posts: int) -> None:
    run_tag(TagConfig(), run_dir)
    whole = captions(run_dir)
    other = tmp_path / "batched"
    shutil.copytree(run_dir / "sample", other / "sample")
    manifest = run_tag(TagConfig(), other, batch_posts=batch_posts)
    batched = pl.read_parquet(other / "tag" / "captions.parquet")
    assert batched.equals(whole)
    assert manifest.counts == read_manifest(run_dir / "tag").counts
    assert not list((other / "tag").glob(".part-*"))


# --- issue 14: quality by rating and upload year, or after an age decay ---------------


def with_posts(run_dir: Path) -> pl.DataFrame:
    posts = pl.read_parquet(run_dir / "sample" / "posts.parquet")
    return captions(run_dir).join(posts.select("id", "rating", "year", "fav_count"), on="id")


def level(fav: float, thresholds) -> int:
    return len(thresholds) - sum(fav > t for t in thresholds)


@pytest.mark.parametrize("preset", ["delta", "epsilon"])
def test_presets_keep_the_per_rating_ranking(run_dir: Path, meta: Metadata, preset: str) -> None:
    """The recipes' quality tags are today's: each post ranked within its rating over the
    whole metadata (recomputed from the SQLite rows), whatever years the posts have."""
    cfg = TagConfig(**preset_dict(preset)["tag"])
    assert cfg.quality.normalize == "rating"
    manifest = run_tag(cfg, run_dir)
    p = cfg.quality.percentiles
    rating, fav = meta.posts["rating"], meta.posts["fav_count"]
    want = {r: np.percentile(fav[rating == r], p, method="inverted_cdf") for r in range(4)}
    for r, f, tag in with_posts(run_dir).select("rating", "fav_count", "quality").rows():
        assert tag == cfg.quality.tags[level(f, want[r])]
    bins = manifest.counts["quality_thresholds"]["bins"]
    assert [b["thresholds"] for b in bins] == [want[r].astype(int).tolist() for r in range(4)]
    assert [b["posts"] for b in bins] == [int((rating == r).sum()) for r in range(4)]


def test_rating_year_ranks_within_rating_and_year_bins(run_dir: Path, meta: Metadata) -> None:
    """Recomputed from the SQLite rows: each rating's years pooled oldest first into bins
    of >= 100 posts, NumPy inverted_cdf percentiles within the bin; the manifest lists
    every (rating, year) with its bin and thresholds."""
    q = {"normalize": "rating_year", "min_posts_per_bin": 100}
    manifest = run_tag(TagConfig(quality=q), run_dir)
    rating, fav = meta.posts["rating"], meta.posts["fav_count"]
    year = np.array([int(s[:4]) for s in meta.posts["created_at"]])
    want, bins = {}, []
    for r in range(4):
        years = sorted(set(year[rating == r].tolist()))
        sizes = [int(((rating == r) & (year == y)).sum()) for y in years]
        for span in year_spans(years, sizes, 100):
            pooled = fav[(rating == r) & np.isin(year, span)]
            cuts = np.percentile(pooled, PERCENTILES, method="inverted_cdf").astype(int).tolist()
            want |= {(r, y): cuts for y in span}
            bins += [(r, y, span[0], span[-1], len(pooled), cuts) for y in span]
    assert 8 < len({b[2:4] for b in bins}) < len(bins)  # some years pooled, not all
    got = with_posts(run_dir)
    for r, y, f, tag in got.select("rating", "year", "fav_count", "quality").rows():
        assert tag == QUALITY[level(f, want[(r, y)])]
    report = manifest.counts["quality_thresholds"]
    assert report["normalize"] == "rating_year"
    names = ["general", "sensitive", "questionable", "explicit"]
    assert [(names.index(b["rating"]), b["year"], b["first_year"], b["last_year"], b["posts"],
             b["thresholds"]) for b in report["bins"]] == bins  # fmt: skip
    # the same fav_count ranks differently across years: rating_year differs from rating
    assert got["quality"].to_list() != run_and_read(TagConfig(), run_dir)["quality"].to_list()


def run_and_read(cfg: TagConfig, run_dir: Path) -> pl.DataFrame:
    run_tag(cfg, run_dir)
    return with_posts(run_dir)


def test_rating_decay_ranks_decayed_fav_counts(run_dir: Path, meta: Metadata) -> None:
    """fav_count x 0.8 ** (snapshot year - upload year), ranked within each rating over the
    whole metadata (recomputed from the SQLite rows)."""
    q = {"normalize": "rating_decay", "decay_per_year": 0.8}
    manifest = run_tag(TagConfig(quality=q), run_dir)
    snapshot_year = max(datetime.fromisoformat(s) for s in meta.posts["created_at"]).year
    rating = meta.posts["rating"]
    year = np.array([int(s[:4]) for s in meta.posts["created_at"]])
    score = meta.posts["fav_count"] * 0.8 ** (snapshot_year - year).astype(float)
    want = {r: np.percentile(score[rating == r], PERCENTILES, method="inverted_cdf")
            for r in range(4)}  # fmt: skip
    for r, y, f, tag in with_posts(run_dir).select("rating", "year", "fav_count", "quality").rows():
        assert tag == QUALITY[level(f * 0.8 ** (snapshot_year - y), want[r])]
    report = manifest.counts["quality_thresholds"]
    assert report["year_weights"][str(snapshot_year)] == 1.0
    got = [b["thresholds"] for b in report["bins"]]
    np.testing.assert_allclose(got, [want[r] for r in range(4)], rtol=1e-12)


@pytest.mark.parametrize("normalize", ["rating_year", "rating_decay"])
def test_sample_stage_without_years_fails_and_writes_nothing(tmp_path: Path, normalize: str):
    """A sample stage written before issue 14 (fav_hist without a year) works for `rating`
    and is one clear error for the date-aware rankings."""
    posts = [{"id": 1, "created_at": "2012-01-01T00:00:00+00:00", "rating": 0, "fav_count": 3}]
    write_sample_stage(tmp_path, posts, [(1, "solo", 0)], [(1, 1)], fav_hist=[(0, 3, 1)])
    q = {"normalize": normalize, "decay_per_year": 0.9}
    with pytest.raises(InputError, match="needs the upload year .* rebuild the sample stage"):
        run_tag(TagConfig(quality=q), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]
    run_tag(TagConfig(quality={"decay_per_year": 0.9}), tmp_path)  # `rating` still works
