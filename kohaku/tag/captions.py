"""Caption building (pure functions on Polars frames).

Tag text rules and groups are computed once on the tag dictionary (thousands of
rows), then joined onto the post-tag rows, grouped per post, and laid out as
head (kept in place), body (shuffled and dropped per step by the trainer) and tail
(kept in place).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from kohaku.sample.config import RATINGS
from kohaku.tag.config import TagConfig

GROUPS = ["count", "character", "copyright", "artist", "general", "meta"]
GROUP_CODES = {g: i for i, g in enumerate(GROUPS)}
CATEGORY_GROUP = {0: "general", 1: "artist", 2: "character", 3: "copyright", 4: "meta"}


@dataclass(frozen=True)
class LayoutSpec:
    head: tuple[str, ...]
    body: tuple[str, ...]
    tail: tuple[str, ...]
    keep_separator: str | None = None


LAYOUTS = {
    # count, character, series, artists, special (quality, rating, date), general
    "delta": LayoutSpec(
        head=("count", "character", "copyright", "artist", "quality", "rating", "date"),
        body=("general", "meta"), tail=()),
    # count, character, series, artists, general, quality, year, meta, rating
    "epsilon": LayoutSpec(
        head=("count", "character", "copyright", "artist"), body=("general",),
        tail=("quality", "date", "meta", "rating")),
    # HakuBooru KohakuCaptioner: keep tags ||| general, meta, year, rating, quality
    "hakubooru": LayoutSpec(
        head=("count", "character", "copyright", "artist"), body=("general", "meta"),
        tail=("date", "rating", "quality"), keep_separator="|||"),
}  # fmt: skip


def tag_text(name: pl.Expr, cfg: TagConfig) -> pl.Expr:
    """danbooru spelling -> caption text: underscores to spaces (not in short
    emoticon tags like ^_^), optional sd-webui bracket escaping."""
    text = name
    if cfg.underscores_to_spaces:
        long = name.str.len_chars() > cfg.short_tag_max_len
        text = pl.when(long).then(name.str.replace_all("_", " ", literal=True)).otherwise(name)
    if cfg.escape_brackets:
        text = text.str.replace_all("(", r"\(", literal=True)
        text = text.str.replace_all(")", r"\)", literal=True)
    return text


def _contains_any(name: pl.Expr, keywords: list[str]) -> pl.Expr:
    if not keywords:
        return pl.lit(False)
    return pl.any_horizontal([name.str.contains(k, literal=True) for k in keywords])


def tag_dictionary(tags: pl.DataFrame, cfg: TagConfig) -> pl.DataFrame:
    """(id, name, category) -> (tag_id, group, code, text, name); dropped tags removed.
    `code` is the group's index in GROUPS (cheaper to compare than the name)."""
    name, cat = pl.col("name"), pl.col("category")
    group = (
        pl.when((cat == 0) & name.is_in(cfg.resolved_count_tags())).then(pl.lit("count"))
        .when((cat == 1) & _contains_any(name, cfg.artist_drop_keywords)).then(None)
        .when((cat == 4) & _contains_any(name, cfg.meta_drop_keywords)).then(None)
        .otherwise(cat.replace_strict(CATEGORY_GROUP, default=None, return_dtype=pl.String))
    )  # fmt: skip
    return (
        tags.filter(name.str.strip_chars() != "")
        .select(tag_id=pl.col("id"), group=group, text=tag_text(name, cfg), name=name)
        .filter(pl.col("group").is_not_null())
        .with_columns(code=pl.col("group").replace_strict(GROUP_CODES, return_dtype=pl.Int8))
    )


# tag ids above this get a hash join instead of a dense id -> dictionary-row table
MAX_DENSE_TAG_ID = 1 << 26
# the tag groups as stored: dictionary-encoded (each distinct tag text stored once per
# file); `as_strings` turns them back into plain string lists
TAG_LIST = pl.List(pl.Categorical)


def group_tags(post_tags: pl.LazyFrame, dictionary: pl.DataFrame, order: str) -> pl.LazyFrame:
    """Post-tag rows -> one row per post with a list column per group (Categorical tag
    texts), in row order (`post_tags` sorted by post_id, ord) or by name.

    Each row looks its tag up in the dictionary by position (a gather through a dense
    id -> row table) instead of a hash join, and carries the text as a Categorical: a
    32-bit code instead of a string copy. Both keep the post order, so the group-by
    takes its sorted fast path; about five times faster than joining strings."""
    by_name = order == "name"
    dictionary = dictionary.with_columns(
        pl.col("text").cast(pl.Categorical), name_rank=pl.col("name").rank("ordinal")
    )
    rows = post_tags.select("post_id", pl.col("tag_id").cast(pl.UInt32))
    rows = _look_up(rows, dictionary, ["code", "text", *(["name_rank"] if by_name else [])])
    if by_name:
        rows = rows.sort("post_id", "name_rank", maintain_order=True)
    rows = rows.with_columns(pl.col("post_id").set_sorted())
    aggs = [pl.col("text").filter(pl.col("code") == i).alias(g) for i, g in enumerate(GROUPS)]
    grouped = rows.group_by("post_id", maintain_order=True).agg(aggs)
    return grouped.select(pl.col("post_id").cast(pl.Int64).alias("id"), *GROUPS)


def _look_up(rows: pl.LazyFrame, dictionary: pl.DataFrame, columns: list[str]) -> pl.LazyFrame:
    """`rows` (with a UInt32 `tag_id`) with `columns` of their dictionary entry; rows whose
    tag is not in the dictionary (dropped tags) are removed; row order is kept."""
    ids = dictionary["tag_id"].cast(pl.Int64)
    if ids.is_empty() or ids.max() >= MAX_DENSE_TAG_ID or ids.min() < 0:
        vocab = dictionary.lazy().select(pl.col("tag_id").cast(pl.UInt32), *columns)
        return rows.join(vocab, on="tag_id", how="inner", maintain_order="left")
    # one null past the largest id: any larger tag id is clipped onto it (not in dictionary)
    top = int(ids.max()) + 1
    table = pl.Series("row", [None], dtype=pl.UInt32).extend_constant(None, top)
    table = table.scatter(ids, pl.int_range(len(ids), dtype=pl.UInt32, eager=True))
    row = pl.lit(table).gather(pl.col("tag_id").clip(upper_bound=top))
    rows = rows.with_columns(row=row).filter(pl.col("row").is_not_null())
    return rows.with_columns(pl.lit(dictionary[c]).gather(pl.col("row")) for c in columns)


def as_strings(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The tag-group columns of a captions frame as plain string lists."""
    cats = [n for n, t in frame.collect_schema().items() if t == TAG_LIST]
    return frame.with_columns(pl.col(c).cast(pl.List(pl.String)) for c in cats)


def date_tag_expr(cfg: TagConfig) -> pl.Expr:
    year, expr = pl.col("year"), None
    for span in cfg.date_tags:
        cond = year >= span.first_year
        if span.last_year is not None:
            cond = cond & (year <= span.last_year)
        expr = (pl.when(cond) if expr is None else expr.when(cond)).then(pl.lit(span.tag))
    return pl.lit(None, pl.String) if expr is None else expr.otherwise(None)


def rating_tags_expr(cfg: TagConfig) -> pl.Expr:
    mapping = cfg.resolved_rating_tags()
    expr = pl.when(pl.lit(False)).then(pl.lit([], pl.List(pl.String)))
    for i, rating in enumerate(RATINGS):
        expr = expr.when(pl.col("rating") == i).then(
            pl.lit(mapping.get(rating, []), pl.List(pl.String))
        )
    return expr.otherwise(pl.lit([], pl.List(pl.String)))


def _as_list(col: str) -> pl.Expr:
    """A group column as a list (scalar tags become 0- or 1-element lists)."""
    if col in ("quality", "date"):
        c = pl.col(col)
        return (
            pl.when(c.is_null()).then(pl.lit([], pl.List(pl.String))).otherwise(pl.concat_list(c))
        )
    name = "rating_tags" if col == "rating" else col
    return pl.col(name).cast(pl.List(pl.String)).fill_null(pl.lit([], pl.List(pl.String)))


def _concat(cols: tuple[str, ...]) -> pl.Expr:
    if not cols:
        return pl.lit([], pl.List(pl.String))
    return pl.concat_list([_as_list(c) for c in cols])


def lay_out(df: pl.LazyFrame, layout: str, sep: str = ", ") -> pl.LazyFrame:
    """Add the layout's head/body/tail lists (what the trainer keeps, shuffles and drops
    per step) and the caption they make. `captions.parquet` stores the groups; this
    derives the lists from them."""
    spec = LAYOUTS[layout]
    df = df.with_columns(head=_concat(spec.head), body=_concat(spec.body), tail=_concat(spec.tail))
    rest = pl.concat_list("body", "tail").list.join(sep)
    if spec.keep_separator is None:
        caption = pl.concat_list("head", "body", "tail").list.join(sep)
    else:  # exactly HakuBooru: "<keep>, |||<rest>", even when keep is empty
        caption = pl.col("head").list.join(sep) + sep + spec.keep_separator + rest
    return df.with_columns(caption=caption)


def _part_text(col: str, sep: str) -> pl.Expr:
    """One group as text, null when it is empty."""
    if col in ("quality", "date"):
        return pl.col(col)
    c = pl.col("rating_tags" if col == "rating" else col).cast(pl.List(pl.String))
    # joined once, "" -> null (a when/then on the list's length cast and joined it twice)
    return c.list.join(sep).replace("", None)


def _join_parts(cols: tuple[str, ...], sep: str) -> pl.Expr:
    if not cols:
        return pl.lit("")
    parts = [_part_text(c, sep) for c in cols]
    return pl.concat_str(parts, separator=sep, ignore_nulls=True).fill_null("")


def caption_expr(layout: str, sep: str = ", ") -> pl.Expr:
    """The caption of `lay_out`, built group by group as strings: the same text without
    materialising the concatenated lists (several times faster on millions of posts)."""
    spec = LAYOUTS[layout]
    if spec.keep_separator is None:
        return _join_parts(spec.head + spec.body + spec.tail, sep)
    return (
        _join_parts(spec.head, sep)
        + sep
        + spec.keep_separator
        + _join_parts(spec.body + spec.tail, sep)
    )
