"""Quality tags from fav_count percentiles (pure functions on frames).

A post gets level i, the first whose threshold its fav_count exceeds (strictly, as
HakuBooru does), or the last level when it exceeds none. Thresholds come from the
fav_count histogram of the whole metadata (`fav_hist`: rating, year, fav_count, n; the
sample stage writes it) or from a table given in the config, and rank a post among
- `rating`: the posts of its rating, all years pooled (the Kohaku XL recipes);
- `rating_year`: the posts of its rating uploaded the same year; a rating's years are
  pooled oldest first into bins of at least `min_posts_per_bin` posts (`year_spans`);
- `rating_decay`: the posts of its rating, each fav_count first multiplied by
  `decay_per_year ** age` (age: snapshot year - upload year), NoobAI-XL's idea.
In the last two, a post without an upload year (or of a year the histogram lacks) gets
no quality tag. README "Tag stage" says which published models did what.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from kohaku.errors import ConfigError, InputError
from kohaku.sample.config import RATINGS
from kohaku.tag.config import QualityConfig

# the value compared with the thresholds: `rating_decay` compares the decayed fav_count
VALUE = {"rating": "fav_count", "rating_year": "fav_count", "rating_decay": "score"}


@dataclass(frozen=True)
class Thresholds:
    """What `add_quality` joins onto the posts, and what the manifest reports.

    table: rating (and year for rating_year), t0..t{n-1}, and per-bin info columns;
    weights: year -> weight (rating_decay only)."""

    normalize: str
    table: pl.DataFrame
    weights: pl.DataFrame | None = None

    @property
    def keys(self) -> list[str]:
        return ["rating", "year"] if self.normalize == "rating_year" else ["rating"]


def _thresholds(hist: pl.DataFrame, percentiles: list[float], keys: list[str], value: str):
    """Per group of `keys`, the value at each percentile: the smallest v with
    P(value <= v) >= p/100 (the nearest-rank, "lower" definition)."""
    cum = hist.sort(*keys, value).with_columns(
        cdf=pl.col("n").cum_sum().over(keys) / pl.col("n").sum().over(keys)
    )
    cols = [
        pl.col(value).filter(pl.col("cdf") >= p / 100 - 1e-12).min().alias(f"t{i}")
        for i, p in enumerate(percentiles)
    ]
    return cum.group_by(keys).agg(pl.col("n").sum().alias("posts"), *cols).sort(keys)


def thresholds_from_hist(hist: pl.DataFrame, percentiles: list[float]) -> pl.DataFrame:
    """Per rating, the fav_count at each percentile, all upload years pooled."""
    return _per_rating(hist, percentiles).drop("posts")


def _per_rating(hist: pl.DataFrame, percentiles: list[float]) -> pl.DataFrame:
    pooled = hist.group_by("rating", "fav_count").agg(pl.col("n").sum())
    return _thresholds(pooled, percentiles, ["rating"], "fav_count")


def thresholds_from_table(table: dict[str, list[int]], n: int) -> pl.DataFrame:
    missing = [r for r in RATINGS if r not in table]
    if missing:
        raise ConfigError(f"tag.quality.table lacks ratings {missing}")
    rows = [{"rating": RATINGS.index(r), **{f"t{i}": table[r][i] for i in range(n)}}
            for r in RATINGS]  # fmt: skip
    return pl.DataFrame(rows).cast({"rating": pl.Int32})


def year_spans(years: list[int], counts: list[int], min_posts: int) -> list[list[int]]:
    """Consecutive years (ascending) pooled oldest first: a span closes once it holds
    `min_posts` posts; a short last span joins the one before it (or stays alone when
    it is the only one: a rating with fewer posts than `min_posts` is one bin)."""
    spans, current, total = [], [], 0
    for year, n in zip(years, counts, strict=True):
        current.append(year)
        total += n
        if total >= min_posts:
            spans.append(current)
            current, total = [], 0
    if current and spans:
        spans[-1] += current
    elif current:
        spans.append(current)
    return spans


def year_bins(hist: pl.DataFrame, min_posts: int) -> pl.DataFrame:
    """rating, year, year_posts, first_year, last_year: the bin of each (rating, year)."""
    counts = hist.group_by("rating", "year").agg(year_posts=pl.col("n").sum())
    counts = counts.sort("rating", "year")
    rows = []
    for (rating,), part in counts.group_by("rating", maintain_order=True):
        years, sizes = part["year"].to_list(), part["year_posts"].to_list()
        for span in year_spans(years, sizes, min_posts):
            rows += [(rating, y, span[0], span[-1]) for y in span]
    schema = {"rating": pl.Int32, "year": pl.Int32, "first_year": pl.Int32, "last_year": pl.Int32}
    bins = pl.DataFrame(rows, schema=schema, orient="row")
    return counts.cast({"rating": pl.Int32, "year": pl.Int32}).join(bins, on=["rating", "year"])


def thresholds_by_year(
    hist: pl.DataFrame, percentiles: list[float], min_posts: int
) -> pl.DataFrame:
    """Per (rating, year): its bin, the bin's size and the fav_count at each percentile
    within the bin."""
    hist = hist.filter(pl.col("year").is_not_null()).cast({"rating": pl.Int32, "year": pl.Int32})
    bins = year_bins(hist, min_posts)
    pooled = (
        hist.join(bins.select("rating", "year", "first_year"), on=["rating", "year"])
        .group_by("rating", "first_year", "fav_count")
        .agg(pl.col("n").sum())
    )
    per_bin = _thresholds(pooled, percentiles, ["rating", "first_year"], "fav_count")
    return bins.join(per_bin, on=["rating", "first_year"]).sort("rating", "year")


def year_weights(hist: pl.DataFrame, decay: float, snapshot_year: int) -> pl.DataFrame:
    """year -> decay ** (snapshot_year - year); years after the snapshot weigh 1."""
    years = hist.select(pl.col("year").drop_nulls().unique().sort().cast(pl.Int32))
    age = (snapshot_year - pl.col("year")).clip(lower_bound=0)
    return years.with_columns(weight=pl.lit(decay, pl.Float64).pow(age))


def thresholds_decayed(
    hist: pl.DataFrame, percentiles: list[float], weights: pl.DataFrame
) -> pl.DataFrame:
    """Per rating, the decayed fav_count (`score`) at each percentile; posts without an
    upload year are left out."""
    scored = with_score(hist.cast({"year": pl.Int32}), weights)
    return _thresholds(scored.drop_nulls("score"), percentiles, ["rating"], "score")


def with_score(frame: pl.DataFrame | pl.LazyFrame, weights: pl.DataFrame):
    """Add `score` = fav_count x the weight of the row's year (null without a year). The
    histogram and the posts go through this one expression, so a post whose score
    equals a threshold compares equal, bit for bit."""
    w = weights.lazy() if isinstance(frame, pl.LazyFrame) else weights
    joined = frame.join(w, on="year", how="left", maintain_order="left")
    return joined.with_columns(score=pl.col("fav_count") * pl.col("weight")).drop("weight")


def compute_thresholds(
    q: QualityConfig, hist: pl.DataFrame | None, snapshot_year: int | None = None
) -> Thresholds:
    """The thresholds `q` asks for, from the config's table or the histogram."""
    n = len(q.percentiles)
    if q.table is not None:
        return Thresholds("rating", thresholds_from_table(q.table, n))
    hist = hist.cast({"rating": pl.Int32})
    if q.normalize == "rating":
        return Thresholds("rating", _per_rating(hist, q.percentiles))
    if "year" not in hist.columns:
        raise InputError(
            f"tag.quality.normalize = {q.normalize!r} needs the upload year in the sample "
            "stage's fav_hist.parquet (older kohaku wrote none): rebuild the sample stage "
            "(delete <run>/sample, then `kohaku sample`)"
        )
    if q.normalize == "rating_year":
        table = thresholds_by_year(hist, q.percentiles, q.min_posts_per_bin)
        return Thresholds("rating_year", table)
    if snapshot_year is None:
        raise InputError("rating_decay needs the sample manifest's metadata_snapshot_at")
    weights = year_weights(hist, q.decay_per_year, snapshot_year)
    return Thresholds("rating_decay", thresholds_decayed(hist, q.percentiles, weights), weights)


def quality_expr(n_thresholds: int, tags: list[str], value: str = "fav_count") -> pl.Expr:
    """Quality tag from `value` and the threshold columns t0..t{n-1}."""
    exceeded = pl.sum_horizontal(
        [(pl.col(value) > pl.col(f"t{i}")).cast(pl.Int32) for i in range(n_thresholds)]
    )
    level = n_thresholds - exceeded
    return pl.lit(pl.Series(tags)).get(level)


def add_quality(
    posts: pl.DataFrame | pl.LazyFrame,
    thresholds: pl.DataFrame | pl.LazyFrame | Thresholds,
    tags: list[str],
    eligible: pl.Expr,
) -> pl.DataFrame | pl.LazyFrame:
    """Add a `quality` column (null where `eligible` is false, fav_count is unknown, or
    the post's rating (and year) has no thresholds)."""
    if not isinstance(thresholds, Thresholds):  # a per-rating frame
        thresholds = Thresholds("rating", thresholds)
    n, keys, value = len(tags) - 1, thresholds.keys, VALUE[thresholds.normalize]
    t_cols = [f"t{i}" for i in range(n)]
    table = thresholds.table.select(*keys, *t_cols).cast({k: pl.Int32 for k in keys})
    if thresholds.weights is not None:
        posts = with_score(posts, thresholds.weights)
    lazy = isinstance(posts, pl.LazyFrame)
    table = table.lazy() if lazy and isinstance(table, pl.DataFrame) else table
    # the tag stage relies on the posts keeping their order (by id)
    joined = posts.join(table, on=keys, how="left", maintain_order="left")
    # a null value compares as null, which sum_horizontal would count as "not exceeded":
    # without this the post would be tagged with the worst level
    has = pl.col("t0").is_not_null() & pl.col(value).is_not_null() & eligible
    out = joined.with_columns(
        quality=pl.when(has).then(quality_expr(n, tags, value)).otherwise(None)
    )
    return out.drop(t_cols + ([value] if value != "fav_count" else []))


def report(thresholds: Thresholds, percentiles: list[float]) -> dict:
    """The manifest's account of the thresholds: one entry per rating or (rating, year)."""
    bins = []
    for row in thresholds.table.sort(thresholds.keys).iter_rows(named=True):
        entry = {"rating": RATINGS[row.pop("rating")]}
        cuts = [row.pop(f"t{i}") for i in range(len(percentiles))]
        entry.update({k: v for k, v in row.items() if k != "posts"})
        entry["posts"] = row.get("posts")  # the population ranked; none for a config table
        entry["thresholds"] = cuts
        bins.append(entry)
    out = {"normalize": thresholds.normalize, "percentiles": list(percentiles), "bins": bins}
    if thresholds.weights is not None:
        out["year_weights"] = {str(y): w for y, w in thresholds.weights.rows()}
    return out
