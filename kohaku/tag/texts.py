"""Natural-language captions joined by post id (issue 14: Kohaku XL Zeta trained on danbooru
tags and Florence-2 captions).

Reads `tag.text_captions`: a parquet file, or JSON lines (`.jsonl`, `.ndjson`, `.json`), with
an integer `id` (the danbooru post id) and a string `text` column, one row per post; other
columns are ignored. The public danbooru2023 Florence-2 caption sets are parquet files of
this shape (one caption per post id). Writes nothing: `kohaku.tag.run` joins the texts
onto the captions (`text`, null for a post without one).

Every check runs before the tag stage reads anything else, so a bad file is one clear error:
missing or unreadable, a missing or mistyped `id` / `text` column, a null or duplicated id.
Texts are cleaned as tags are (`escape_brackets`), whitespace runs become one space, and an
empty text counts as none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from kohaku.errors import InputError

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
FIX = "give a parquet or JSON lines file with columns id (integer post id) and text (string)"


@dataclass(frozen=True)
class TextSource:
    """A checked caption file: how to scan it, and how many rows it has."""

    path: Path
    rows: int

    def scan(self) -> pl.LazyFrame:
        """(id Int64, text String) of every row, uncleaned."""
        return _scan(self.path).select(pl.col("id").cast(pl.Int64), pl.col("text"))


def _scan(path: Path) -> pl.LazyFrame:
    if path.suffix.lower() in JSON_SUFFIXES:
        # a column that is null in the first rows would be inferred as null: read them all
        return pl.scan_ndjson(path, infer_schema_length=None)
    return pl.scan_parquet(path)


def open_text_source(path: Path) -> TextSource:
    """Check `path` (exists, readable, columns, types, ids unique and not null); one
    InputError naming the file and what to fix otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"tag.text_captions {path} does not exist: {FIX}")
    try:
        schema = _scan(path).collect_schema()
    except Exception as exc:  # polars raises several types for a file it cannot read
        raise InputError(f"tag.text_captions {path} cannot be read ({_first_line(exc)}): "
                         f"{FIX}") from None  # fmt: skip
    for column, ok, want in (("id", lambda t: t.is_integer(), "integers"),
                             ("text", _is_text, "strings")):  # fmt: skip
        if column not in schema:
            raise InputError(f"tag.text_captions {path} has no `{column}` column (it has "
                             f"{', '.join(schema.names()) or 'none'}): {FIX}")  # fmt: skip
        if not ok(schema[column]):
            raise InputError(f"tag.text_captions {path}: column `{column}` holds "
                             f"{schema[column]}, not {want}: {FIX}")  # fmt: skip
    return TextSource(path, _check_ids(path))


def _is_text(dtype: pl.DataType) -> bool:
    # an all-null JSON column is inferred as Null: no text at all, but not a wrong type
    return dtype in (pl.String, pl.Categorical, pl.Null)


def _check_ids(path: Path) -> int:
    """Rows of the file; InputError on a null or duplicated id (reads the id column only)."""
    ids = pl.col("id")
    stats = (
        _scan(path)
        .select(rows=pl.len(), nulls=ids.null_count(), unique=ids.n_unique())
        .collect()
        .row(0, named=True)
    )
    if stats["nulls"]:
        raise InputError(f"tag.text_captions {path}: {stats['nulls']} rows have no id: {FIX}")
    if stats["unique"] != stats["rows"]:
        dupes = (
            _scan(path).group_by("id").len().filter(pl.col("len") > 1).sort("id").head(5)
            .collect()["id"].to_list()
        )  # fmt: skip
        raise InputError(f"tag.text_captions {path}: {stats['rows'] - stats['unique']} "
                         f"duplicate ids (first: {dupes}); keep one text per post id")  # fmt: skip
    return int(stats["rows"])


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def clean_text(text: pl.Expr, escape_brackets: bool) -> pl.Expr:
    """Whitespace runs (newlines too) -> one space, trimmed; "" -> null; brackets escaped
    as in tags when `escape_brackets` (sd-webui reads bare brackets as emphasis)."""
    # the same as replacing r"\s+" but matching only what changes (runs of two or more,
    # or one that is not a space): ~8x faster, as most texts are plain single-spaced prose
    text = text.cast(pl.String).str.replace_all(r"\s{2,}|[^\S ]", " ").str.strip_chars()
    if escape_brackets:
        text = text.str.replace_all("(", r"\(", literal=True)
        text = text.str.replace_all(")", r"\)", literal=True)
    return pl.when(text.str.len_bytes() > 0).then(text).otherwise(None)


def join_texts(
    posts: pl.LazyFrame, source: TextSource, escape_brackets: bool,
    id_range: tuple[int, int] | None = None,
) -> pl.LazyFrame:  # fmt: skip
    """`posts` (sorted by id) with a `text` column: the post's cleaned text, or null."""
    texts = source.scan()
    if id_range is not None:  # lets the parquet reader skip row groups by their statistics
        texts = texts.filter(pl.col("id").is_between(*id_range))
    texts = texts.select("id", text=clean_text(pl.col("text"), escape_brackets))
    return posts.join(texts, on="id", how="left", maintain_order="left")
