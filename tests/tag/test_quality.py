"""Quality tags: fav_count percentile thresholds within each rating (nearest rank), levels
by strict `>`, and the date-aware rankings of issue 14 (rating x year bins, age decay)."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from kohaku.errors import ConfigError, InputError
from kohaku.tag.config import QUALITY_TAGS, QualityConfig
from kohaku.tag.quality import (
    add_quality,
    compute_thresholds,
    report,
    thresholds_from_hist,
    thresholds_from_table,
    year_spans,
)

RATINGS = ["general", "sensitive", "questionable", "explicit"]


def hist(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={"rating": pl.Int32, "fav_count": pl.Int64, "n": pl.Int64}, orient="row"
    )


def as_dict(thresholds: pl.DataFrame) -> dict[int, list[int]]:
    return {r[0]: list(r[1:]) for r in thresholds.rows()}


@pytest.mark.parametrize(
    "rows, percentiles, expected",
    [
        # fav_count 1..100 once each: the p-th percentile is p
        ([(0, v, 1) for v in range(1, 101)], [95, 85, 75, 50, 25, 10], [95, 85, 75, 50, 25, 10]),
        # half zeros: P(fav <= 0) = 0.5 reaches the 50th percentile exactly
        ([(0, 0, 50), (0, 10, 50)], [95, 50, 49, 25], [10, 0, 0, 0]),
        ([(0, 0, 50), (0, 10, 50)], [50.5], [10]),
        ([(1, 7, 3)], [99, 1], [7, 7]),  # one value
        # 0 (x4), 1, 2, 3, 100: cdf 0.5, 0.625, 0.75, 0.875, 1
        (
            [(2, 0, 4), (2, 1, 1), (2, 2, 1), (2, 3, 1), (2, 100, 1)],
            [90, 87.5, 75, 60, 50],
            [100, 3, 2, 1, 0],
        ),
        # rows in any order, counts summed per value
        ([(3, 5, 1), (3, 1, 1), (3, 3, 2)], [75, 50, 25], [3, 3, 1]),
    ],
)
def test_thresholds_from_hist(rows, percentiles, expected) -> None:
    got = thresholds_from_hist(hist(rows), percentiles)
    rating = rows[0][0]
    assert got.columns == ["rating", *[f"t{i}" for i in range(len(percentiles))]]
    assert as_dict(got) == {rating: expected}


def test_thresholds_per_rating() -> None:
    rows = [(0, v, 1) for v in range(10)] + [(3, v, 1) for v in range(100, 110)]
    got = as_dict(thresholds_from_hist(hist(rows), [90, 50, 10]))
    assert got == {0: [8, 4, 0], 3: [108, 104, 100]}


@pytest.mark.parametrize("seed", range(5))
def test_thresholds_match_numpy_inverted_cdf(seed: int) -> None:
    """The nearest-rank definition is NumPy's `inverted_cdf` on the expanded values."""
    rng = np.random.default_rng(seed)
    rows, values = [], {}
    for rating in range(4):
        favs = np.floor(np.exp(rng.normal(1 + rating, 1.2, 500))).astype(int)
        uniq, counts = np.unique(favs, return_counts=True)
        rows += [(rating, int(f), int(c)) for f, c in zip(uniq, counts, strict=True)]
        values[rating] = favs
    percentiles = [95, 85, 75, 50, 25, 10]
    got = as_dict(thresholds_from_hist(hist(rows), percentiles))
    for rating, favs in values.items():
        expected = np.percentile(favs, percentiles, method="inverted_cdf")
        assert got[rating] == expected.astype(int).tolist()


def test_thresholds_from_table() -> None:
    table = {r: [60 - 10 * i - k for i in range(6)] for k, r in enumerate(RATINGS)}
    got = thresholds_from_table(table, 6)
    assert got.schema["rating"] == pl.Int32
    assert as_dict(got) == {k: table[r] for k, r in enumerate(RATINGS)}


@pytest.mark.parametrize("missing", [["explicit"], ["general", "sensitive"]])
def test_thresholds_from_table_needs_every_rating(missing: list[str]) -> None:
    table = {r: [6, 5, 4, 3, 2, 1] for r in RATINGS if r not in missing}
    with pytest.raises(ConfigError, match=re.escape(f"tag.quality.table lacks ratings {missing}")):
        thresholds_from_table(table, 6)


TABLE = [100, 50, 40, 30, 20, 10]


def quality_of(
    favs: list[int | None], ratings: list[int] | None = None, eligible: pl.Expr | None = None
) -> list[str | None]:
    ratings = ratings or [0] * len(favs)
    eligible = pl.lit(True) if eligible is None else eligible
    posts = pl.DataFrame(
        {"id": range(len(favs)), "rating": ratings, "fav_count": favs},
        schema={"id": pl.Int64, "rating": pl.Int32, "fav_count": pl.Int64},
    )
    thresholds = thresholds_from_table({r: TABLE for r in RATINGS}, 6)
    out = add_quality(posts, thresholds, QUALITY_TAGS, eligible)
    assert out.columns == ["id", "rating", "fav_count", "quality"]
    return out.sort("id")["quality"].to_list()


@pytest.mark.parametrize(
    "fav, tag",
    [
        (101, "masterpiece"),
        (100, "best quality"),  # equal to a threshold falls to the lower level
        (51, "best quality"),
        (50, "great quality"),
        (41, "great quality"),
        (40, "good quality"),
        (31, "good quality"),
        (30, "normal quality"),
        (21, "normal quality"),
        (20, "low quality"),
        (11, "low quality"),
        (10, "worst quality"),
        (0, "worst quality"),
        (-3, "worst quality"),
        (10**9, "masterpiece"),
    ],
)
def test_levels_use_strict_greater_than(fav: int, tag: str) -> None:
    assert quality_of([fav]) == [tag]


def test_ties_in_the_table_skip_levels() -> None:
    favs = [6, 5, 4, 3, 1, 0]
    posts = pl.DataFrame(
        {"fav_count": favs, "rating": [0] * len(favs)},
        schema={"fav_count": pl.Int64, "rating": pl.Int32},
    )
    thresholds = thresholds_from_table({r: [5, 5, 3, 3, 0, 0] for r in RATINGS}, 6)
    out = add_quality(posts, thresholds, QUALITY_TAGS, pl.lit(True))
    got = out.sort("fav_count", descending=True)["quality"].to_list()
    assert got == [
        "masterpiece",
        "great quality",
        "great quality",
        "normal quality",
        "normal quality",
        "worst quality",
    ]


def test_not_eligible_gets_no_quality() -> None:
    assert quality_of([500, 500, 0], eligible=pl.col("id") != 1) == [
        "masterpiece",
        None,
        "worst quality",
    ]


def test_unknown_fav_count_gets_no_quality() -> None:
    """A post without fav_count has no percentile: no tag, not `worst quality`."""
    assert quality_of([None, 5]) == [None, "worst quality"]


def test_rating_without_thresholds_gets_no_quality() -> None:
    posts = pl.DataFrame(
        {"id": [1, 2, 3], "rating": [0, 2, None], "fav_count": [3, 3, 3]},
        schema={"id": pl.Int64, "rating": pl.Int32, "fav_count": pl.Int64},
    )
    thresholds = thresholds_from_hist(hist([(0, 1, 1), (0, 2, 1)]), [50])
    out = add_quality(posts, thresholds, ["good", "bad"], pl.lit(True))
    got = out.sort("id")["quality"].to_list()
    assert got == ["good", None, None]


def test_quality_is_ranked_within_each_rating() -> None:
    """fav_count 10 is the best among general posts and the worst among explicit ones."""
    rows = [(0, v, 10) for v in range(10)] + [(3, v, 10) for v in range(10, 1000, 10)]
    thresholds = thresholds_from_hist(hist(rows), [95, 85, 75, 50, 25, 10])
    posts = pl.DataFrame(
        {"id": [1, 2], "rating": [0, 3], "fav_count": [10, 10]},
        schema={"id": pl.Int64, "rating": pl.Int32, "fav_count": pl.Int64},
    )
    out = add_quality(posts, thresholds, QUALITY_TAGS, pl.lit(True))
    got = out.sort("id")["quality"].to_list()
    assert got == ["masterpiece", "worst quality"]


def test_add_quality_on_lazy_frames_keeps_rows() -> None:
    posts = pl.LazyFrame(
        {"id": [3, 1, 2], "rating": [3, 0, 1], "fav_count": [1, 200, 45]},
        schema={"id": pl.Int64, "rating": pl.Int32, "fav_count": pl.Int64},
    )
    thresholds = thresholds_from_table({r: TABLE for r in RATINGS}, 6).lazy()
    out = add_quality(posts, thresholds, QUALITY_TAGS, pl.lit(True)).collect()
    assert out.select("id", "quality").sort("id").rows() == [
        (1, "masterpiece"),
        (2, "great quality"),
        (3, "worst quality"),
    ]


# --- issue 14: ranking by rating and upload year, or after an age decay ---------------


def year_hist(rows: list[tuple[int, int | None, int, int]]) -> pl.DataFrame:
    """(rating, year, fav_count, n) rows, as the sample stage writes fav_hist."""
    schema = {"rating": pl.Int32, "year": pl.Int32, "fav_count": pl.Int64, "n": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def posts_frame(rows: list[tuple[int, int | None, int | None]]) -> pl.DataFrame:
    """(rating, year, fav_count) per post; ids in row order."""
    schema = {"rating": pl.Int32, "year": pl.Int32, "fav_count": pl.Int64}
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.with_row_index("id").cast({"id": pl.Int64})


def tags_of(posts: pl.DataFrame, q: QualityConfig, hist: pl.DataFrame, snapshot_year=None):
    thresholds = compute_thresholds(q, hist, snapshot_year)
    return add_quality(posts, thresholds, q.tags, pl.lit(True))["quality"].to_list()


# 2010: a quiet year (fav_count 0..9), 2020: a popular one (fav_count 0..99), 100 posts each
TWO_YEARS = year_hist(
    [(0, 2010, v // 10, 1) for v in range(100)] + [(0, 2020, v, 1) for v in range(100)]
)
HALVES = {"percentiles": [50], "tags": ["upper", "lower"]}


def test_same_fav_count_ranks_differently_in_two_years() -> None:
    """fav_count 8 is in the top half of the quiet year and the bottom half of the popular
    one; ranked per rating only, it is in the bottom half both times."""
    posts = posts_frame([(0, 2010, 8), (0, 2020, 8)])
    by_year = QualityConfig(normalize="rating_year", min_posts_per_bin=50, **HALVES)
    assert tags_of(posts, by_year, TWO_YEARS) == ["upper", "lower"]
    assert tags_of(posts, QualityConfig(**HALVES), TWO_YEARS) == ["lower", "lower"]


@pytest.mark.parametrize(
    "counts, min_posts, spans",
    [
        ([500, 500, 500], 100, [[2001], [2002], [2003]]),  # every year big enough
        ([30, 40, 50, 500], 100, [[2001, 2002, 2003], [2004]]),  # small first years pooled
        ([500, 500, 20], 100, [[2001], [2002, 2003]]),  # a short last year joins the one before
        ([500, 60, 30], 100, [[2001, 2002, 2003]]),  # 2002-03 together are still short
        ([10, 20, 30], 100, [[2001, 2002, 2003]]),  # a rating smaller than a bin: one bin
        ([1, 1, 1], 1, [[2001], [2002], [2003]]),
        ([100], 100, [[2001]]),  # exactly min_posts is enough
    ],
)
def test_year_spans(counts: list[int], min_posts: int, spans: list[list[int]]) -> None:
    years = [2001 + k for k in range(len(counts))]
    assert year_spans(years, counts, min_posts) == spans


def test_small_years_share_their_neighbours_thresholds() -> None:
    """2005 (20 posts) is pooled with 2006 (200 posts): both get the thresholds of the pooled
    values; 2007 keeps its own. Each bin's thresholds are NumPy's inverted_cdf percentiles
    of its posts."""
    rng = np.random.default_rng(3)
    values = {2005: rng.integers(0, 5, 20), 2006: rng.integers(0, 50, 200),
              2007: rng.integers(0, 500, 300)}  # fmt: skip
    rows = [(1, y, int(v), 1) for y, vs in values.items() for v in vs]
    percentiles = [95, 85, 75, 50, 25, 10]
    q = QualityConfig(normalize="rating_year", min_posts_per_bin=100, percentiles=percentiles)
    got = compute_thresholds(q, year_hist(rows)).table
    pooled = np.concatenate([values[2005], values[2006]])
    expected = {2005: pooled, 2006: pooled, 2007: values[2007]}
    for row in got.iter_rows(named=True):
        want = np.percentile(expected[row["year"]], percentiles, method="inverted_cdf")
        assert [row[f"t{i}"] for i in range(6)] == want.astype(int).tolist()
        assert row["posts"] == len(expected[row["year"]])
    assert got.select("year", "first_year", "last_year", "year_posts").rows() == [
        (2005, 2005, 2006, 20),
        (2006, 2005, 2006, 200),
        (2007, 2007, 2007, 300),
    ]


def test_rating_ignores_the_year_and_gives_todays_thresholds() -> None:
    """`rating` on the histogram with years = the per-rating thresholds of the same
    histogram with the years summed out (what the sample stage wrote before issue 14)."""
    rng = np.random.default_rng(5)
    rows = [(r, int(y), int(f), int(n)) for r, y, f, n in zip(
        rng.integers(0, 4, 400), rng.integers(2005, 2025, 400), rng.integers(0, 60, 400),
        rng.integers(1, 9, 400), strict=True)]  # fmt: skip
    with_years = year_hist(rows)
    without = with_years.group_by("rating", "fav_count").agg(pl.col("n").sum())
    percentiles = [95, 85, 75, 50, 25, 10]
    got = compute_thresholds(QualityConfig(), with_years).table.drop("posts")
    assert got.equals(thresholds_from_hist(without, percentiles))
    posts = posts_frame([(int(r), 2010, int(f)) for r, f in zip(
        rng.integers(0, 4, 200), rng.integers(0, 70, 200), strict=True)])  # fmt: skip
    today = add_quality(
        posts, thresholds_from_hist(without, percentiles), QUALITY_TAGS, pl.lit(True)
    )
    assert tags_of(posts, QualityConfig(), with_years) == today["quality"].to_list()


def test_posts_without_a_year_get_none_in_the_date_aware_rankings() -> None:
    posts = posts_frame([(0, None, 50), (0, 2020, 50), (0, 2030, 50), (0, 2020, None)])
    hist = TWO_YEARS.vstack(year_hist([(0, None, 3, 5)]))
    assert tags_of(posts, QualityConfig(**HALVES), hist) == ["upper", "upper", "upper", None]
    by_year = QualityConfig(normalize="rating_year", min_posts_per_bin=50, **HALVES)
    assert tags_of(posts, by_year, hist) == [None, "upper", None, None]  # 2030: no bin
    decay = QualityConfig(normalize="rating_decay", decay_per_year=0.5, **HALVES)
    assert tags_of(posts, decay, hist, snapshot_year=2020) == [None, "upper", None, None]


def test_decay_ranks_decayed_fav_counts() -> None:
    """Snapshot 2020, decay 0.5 per year: a 2010 post's fav_count weighs 0.5**10. The
    thresholds are NumPy's inverted_cdf percentiles of the decayed values, and a post
    whose decayed value equals a threshold falls to the lower level (strict >)."""
    q = QualityConfig(normalize="rating_decay", decay_per_year=0.5, percentiles=[90, 50],
                      tags=["top", "mid", "low"])  # fmt: skip
    th = compute_thresholds(q, TWO_YEARS, snapshot_year=2020)
    assert th.weights.rows() == [(2010, 0.5**10), (2020, 1.0)]
    scores = np.array([v // 10 * 0.5**10 for v in range(100)] + list(range(100)), dtype=float)
    want = np.percentile(scores, [90, 50], method="inverted_cdf")
    assert th.table.select("t0", "t1").row(0) == tuple(want) == (79.0, 9 * 0.5**10)
    # equal to a threshold falls to the lower level; 1000 favourites in 2010 weigh 0.98
    posts = posts_frame(
        [(0, 2020, 80), (0, 2020, 79), (0, 2010, 10), (0, 2010, 9), (0, 2010, 1000)]
    )
    assert tags_of(posts, q, TWO_YEARS, 2020) == ["top", "mid", "mid", "low", "mid"]


def test_decay_one_is_the_per_rating_ranking() -> None:
    posts = posts_frame([(0, 2010, v) for v in range(0, 100, 7)])
    decay = QualityConfig(normalize="rating_decay", decay_per_year=1.0)
    assert tags_of(posts, decay, TWO_YEARS, 2020) == tags_of(posts, QualityConfig(), TWO_YEARS)


@pytest.mark.parametrize("normalize", ["rating_year", "rating_decay"])
def test_a_histogram_without_years_is_one_clear_error(normalize: str) -> None:
    """A sample stage written before issue 14 has no year column: rebuild it."""
    q = QualityConfig(normalize=normalize, decay_per_year=0.9)
    with pytest.raises(InputError, match="needs the upload year .* rebuild the sample stage"):
        compute_thresholds(q, hist([(0, 1, 1)]), 2024)


def test_report_lists_every_rating_and_year_bin() -> None:
    q = QualityConfig(normalize="rating_year", min_posts_per_bin=150, **HALVES)
    hist = TWO_YEARS.vstack(year_hist([(0, 2021, 7, 200), (3, 2015, 2, 3)]))
    got = report(compute_thresholds(q, hist), q.percentiles)
    assert got == {"normalize": "rating_year", "percentiles": [50.0], "bins": [
        {"rating": "general", "year": 2010, "year_posts": 100, "first_year": 2010,
         "last_year": 2020, "posts": 200, "thresholds": [9]},
        {"rating": "general", "year": 2020, "year_posts": 100, "first_year": 2010,
         "last_year": 2020, "posts": 200, "thresholds": [9]},
        {"rating": "general", "year": 2021, "year_posts": 200, "first_year": 2021,
         "last_year": 2021, "posts": 200, "thresholds": [7]},
        {"rating": "explicit", "year": 2015, "year_posts": 3, "first_year": 2015,
         "last_year": 2015, "posts": 3, "thresholds": [2]},
    ]}  # fmt: skip
    per_rating = report(compute_thresholds(QualityConfig(**HALVES), hist), [50])
    assert per_rating["bins"] == [
        {"rating": "general", "posts": 400, "thresholds": [7]},
        {"rating": "explicit", "posts": 3, "thresholds": [2]},
    ]
