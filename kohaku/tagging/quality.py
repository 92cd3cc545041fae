"""Quality tags from fav_count percentiles within each rating (pure functions on frames).

A post gets level i, the first whose threshold its fav_count exceeds (strictly, as
HakuBooru does), or the last level when it exceeds none. Thresholds come from the
fav_count histogram of the whole metadata (`fav_hist`: rating, fav_count, n) or from a
table given in the config.
"""

from __future__ import annotations

import polars as pl

from kohaku.errors import ConfigError
from kohaku.sample.config import RATINGS


def thresholds_from_hist(hist: pl.DataFrame, percentiles: list[float]) -> pl.DataFrame:
    """Per rating, the fav_count at each percentile: the smallest value v with
    P(fav_count <= v) >= p/100 (the nearest-rank, "lower" definition)."""
    cum = hist.sort("rating", "fav_count").with_columns(
        cdf=pl.col("n").cum_sum().over("rating") / pl.col("n").sum().over("rating")
    )
    cols = [
        pl.col("fav_count").filter(pl.col("cdf") >= p / 100 - 1e-12).min().alias(f"t{i}")
        for i, p in enumerate(percentiles)
    ]
    return cum.group_by("rating").agg(cols).sort("rating")


def thresholds_from_table(table: dict[str, list[int]], n: int) -> pl.DataFrame:
    missing = [r for r in RATINGS if r not in table]
    if missing:
        raise ConfigError(f"tag.quality.table lacks ratings {missing}")
    rows = [{"rating": RATINGS.index(r), **{f"t{i}": table[r][i] for i in range(n)}}
            for r in RATINGS]  # fmt: skip
    return pl.DataFrame(rows).cast({"rating": pl.Int32})


def quality_expr(n_thresholds: int, tags: list[str]) -> pl.Expr:
    """Quality tag from `fav_count` and the threshold columns t0..t{n-1}."""
    exceeded = pl.sum_horizontal(
        [(pl.col("fav_count") > pl.col(f"t{i}")).cast(pl.Int32) for i in range(n_thresholds)]
    )
    level = n_thresholds - exceeded
    return pl.lit(pl.Series(tags)).get(level)


def add_quality(
    posts: pl.DataFrame, thresholds: pl.DataFrame, tags: list[str], eligible: pl.Expr
) -> pl.DataFrame:
    """Add a `quality` column (null where `eligible` is false, fav_count is unknown or a
    rating lacks thresholds)."""
    n = len(tags) - 1
    joined = posts.join(
        thresholds.cast({"rating": pl.Int32}), on="rating", how="left", maintain_order="left"
    )  # the tag stage relies on the posts keeping their order (by id)
    # a null fav_count compares as null, which sum_horizontal would count as "not
    # exceeded": without this the post would be tagged with the worst level
    has = pl.col("t0").is_not_null() & pl.col("fav_count").is_not_null() & eligible
    return joined.with_columns(
        quality=pl.when(has).then(quality_expr(n, tags)).otherwise(None)
    ).drop([f"t{i}" for i in range(n)])
