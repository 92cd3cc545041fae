"""Quality tags: fav_count percentile thresholds within each rating (nearest rank), and
levels by strict `>`."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from kohaku.errors import ConfigError
from kohaku.tagging.config import QUALITY_TAGS
from kohaku.tagging.quality import add_quality, thresholds_from_hist, thresholds_from_table

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
