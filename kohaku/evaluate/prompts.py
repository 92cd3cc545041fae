"""The evaluation prompt set: built from the run's own captions, fixed and versioned.

Reads a captions frame (`<run>/tag/captions.parquet`: id and the tag groups count,
character, copyright, artist, general, meta, quality, rating_tags, date) and returns the
prompts, laid out by `kohaku.tag.captions.lay_out` in the run's caption layout:

- character prompts: the most frequent character tags, each with its series (the copyright
  tags on at least half of its posts) and its most frequent count tag; the ids of posts
  where it is the only character are kept as references (CCIP character fidelity);
- style probes: the most frequent artist tags on a shared content (the dataset's most
  frequent count tag and general tags);
- quality probes: the same content with each quality tag of the dataset, best first.

Every prompt carries the dataset's best quality tag (characters and styles) and its most
frequent rating tags; no date tag. Pure Polars: ties are broken by name, so the same
captions and config give the same prompts, whose digest names the set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass

import polars as pl

from kohaku.tag import LAYOUTS, lay_out
from kohaku.tag.config import QUALITY_TAGS

PROMPT_SET_VERSION = "1"  # bump when the same captions and config give other prompts
CAPTION_COLUMNS = (
    "id",
    "count",
    "character",
    "copyright",
    "artist",
    "general",
    "quality",
    "rating_tags",
)  # what the prompt set reads of captions.parquet
PROBE_GENERAL = 4  # general tags of the shared style / quality probe content
STRINGS = pl.List(pl.String)
IDS = pl.List(pl.Int64)
PROMPT_SCHEMA = {"prompt_id": pl.String, "kind": pl.String, "tag": pl.String, "series": STRINGS,
                 "prompt": pl.String, "text": pl.String, "references": IDS}  # fmt: skip


@dataclass(frozen=True, eq=False)
class PromptSet:
    """The prompts (`PROMPT_SCHEMA`; `text` is the prompt without the layout's keep
    separator, for CLIP), the layout they follow, the builder version and their digest."""

    frame: pl.DataFrame
    layout: str
    version: str = PROMPT_SET_VERSION

    @property
    def digest(self) -> str:
        rows = self.frame.select("prompt_id", "prompt", "references").rows()
        blob = json.dumps([self.version, self.layout, rows], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Common:
    """What every prompt shares, read off the whole dataset."""

    count: list[str]  # the most frequent count tag (0 or 1)
    general: list[str]  # the PROBE_GENERAL most frequent general tags
    quality: str | None  # the best quality tag present
    rating: list[str]  # the most frequent rating tag set


def build_prompt_set(
    captions: pl.DataFrame | pl.LazyFrame,
    layout: str,
    characters: int,
    styles: int,
    quality_probes: bool,
    references: int = 4,
    image_ids: Collection[int] | None = None,
) -> PromptSet:
    """The prompt set of a captions frame; references only among `image_ids` when given."""
    frame = captions.lazy().collect() if isinstance(captions, pl.LazyFrame) else captions
    common = common_tags(frame)
    rows = character_rows(frame, characters, references, image_ids, common)
    rows += style_rows(frame, styles, common)
    if quality_probes:
        rows += quality_rows(frame, common)
    return PromptSet(lay_out_prompts(rows, layout), layout)


def top_tags(frame: pl.DataFrame, column: str, n: int | None) -> list[str]:
    """The `n` most frequent tags of a list column (ties by name)."""
    tags = frame.select(pl.col(column).explode().drop_nulls())
    ranked = tags.group_by(column).len().sort(["len", column], descending=[True, False])
    return ranked[column].head(n).to_list() if n is not None else ranked[column].to_list()


def common_tags(frame: pl.DataFrame) -> Common:
    present = frame["quality"].drop_nulls().unique().to_list()
    ranked = [q for q in QUALITY_TAGS if q in present]
    best = ranked[0] if ranked else (top_quality(frame) or None)
    ratings = frame.select(key=pl.col("rating_tags").list.join("\x1f")).group_by("key").len()
    ratings = ratings.sort(["len", "key"], descending=[True, False])["key"].to_list()
    rating = ratings[0].split("\x1f") if ratings and ratings[0] else []
    return Common(top_tags(frame, "count", 1), top_tags(frame, "general", PROBE_GENERAL), best,
                  rating)  # fmt: skip


def top_quality(frame: pl.DataFrame) -> str | None:
    counted = frame.select(pl.col("quality").drop_nulls()).group_by("quality").len()
    ranked = counted.sort(["len", "quality"], descending=[True, False])["quality"]
    return ranked[0] if len(ranked) else None


def quality_order(frame: pl.DataFrame) -> list[str]:
    """Quality tags present: the known ones best first, then any others by name."""
    present = set(frame["quality"].drop_nulls().to_list())
    return [q for q in QUALITY_TAGS if q in present] + sorted(present - set(QUALITY_TAGS))


def character_rows(
    frame: pl.DataFrame, n: int, k: int, image_ids: Collection[int] | None, common: Common
) -> list[dict]:
    chars = frame.select("id", "character", "copyright", "count").explode("character")
    chars = chars.drop_nulls("character")
    top = chars.group_by("character").agg(n=pl.len())
    top = top.sort(["n", "character"], descending=[True, False]).head(n)
    series = _series(chars.join(top, on="character"))
    counts = _count_tags(chars.join(top, on="character"))
    refs = _references(frame, k, image_ids)
    rows = []
    for i, (name, _) in enumerate(top.rows()):
        groups = {"count": counts.get(name, []), "character": [name],
                  "copyright": series.get(name, []), "references": refs.get(name, [])}  # fmt: skip
        rows.append(_row(f"character-{i:04d}", "character", name, common, **groups))
    return rows


def _series(chars: pl.DataFrame) -> dict[str, list[str]]:
    """Per character: copyright tags on at least half of its posts, most frequent first."""
    pairs = chars.explode("copyright").drop_nulls("copyright")
    pairs = pairs.group_by("character", "copyright").agg(k=pl.len(), n=pl.col("n").first())
    pairs = pairs.filter(pl.col("k") * 2 >= pl.col("n"))
    pairs = pairs.sort(["character", "k", "copyright"], descending=[False, True, False])
    grouped = pairs.group_by("character", maintain_order=True).agg("copyright")
    return dict(grouped.rows())


def _count_tags(chars: pl.DataFrame) -> dict[str, list[str]]:
    """Per character: its most frequent count tag (1girl, 1boy, ...), if any."""
    pairs = chars.explode("count").drop_nulls("count").group_by("character", "count").len()
    pairs = pairs.sort(["character", "len", "count"], descending=[False, True, False])
    firsts = pairs.group_by("character", maintain_order=True).agg(pl.col("count").first())
    return {name: [tag] for name, tag in firsts.rows()}


def _references(
    frame: pl.DataFrame, k: int, image_ids: Collection[int] | None
) -> dict[str, list[int]]:
    """Per character: the first `k` ids (ascending) of posts where it is the only character."""
    solo = frame.filter(pl.col("character").list.len() == 1)
    solo = solo.select("id", name=pl.col("character").list.first())
    if image_ids is not None:
        keep = pl.DataFrame({"id": list(image_ids)}, schema={"id": pl.Int64})
        solo = solo.join(keep, on="id", how="semi")
    grouped = solo.sort("id").group_by("name", maintain_order=True).agg(pl.col("id").head(k))
    return {name: [int(i) for i in ids] for name, ids in grouped.rows()} if k else {}


def style_rows(frame: pl.DataFrame, n: int, common: Common) -> list[dict]:
    return [
        _row(
            f"style-{i:04d}",
            "style",
            artist,
            common,
            count=common.count,
            artist=[artist],
            general=common.general,
        )  # fmt: skip
        for i, artist in enumerate(top_tags(frame, "artist", n))
    ]


def quality_rows(frame: pl.DataFrame, common: Common) -> list[dict]:
    return [
        _row(
            f"quality-{i:04d}",
            "quality",
            q,
            common,
            count=common.count,
            general=common.general,
            quality=q,
        )  # fmt: skip
        for i, q in enumerate(quality_order(frame))
    ]


def _row(prompt_id: str, kind: str, tag: str, common: Common, **groups) -> dict:
    row = {"prompt_id": prompt_id, "kind": kind, "tag": tag, "references": []}
    row |= {g: [] for g in ("count", "character", "copyright", "artist", "general", "meta")}
    row |= {"quality": common.quality, "rating_tags": common.rating, "date": None}
    return row | groups


def lay_out_prompts(rows: list[dict], layout: str) -> pl.DataFrame:
    """The rows' tag groups laid out as captions of `layout`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown caption layout {layout!r}; one of {sorted(LAYOUTS)}")
    schema = {g: STRINGS for g in ("count", "character", "copyright", "artist", "general",
                                   "meta", "rating_tags")}  # fmt: skip
    schema |= {"prompt_id": pl.String, "kind": pl.String, "tag": pl.String,
               "quality": pl.String, "date": pl.String, "references": IDS}  # fmt: skip
    frame = pl.DataFrame(rows, schema=schema)
    laid = lay_out(frame.lazy(), layout).collect()
    keep = LAYOUTS[layout].keep_separator
    text = pl.col("caption")
    if keep is not None:
        text = text.str.replace(keep, "", literal=True).str.strip_chars(", ")
    return laid.select(
        "prompt_id", "kind", "tag", pl.col("copyright").alias("series"),
        pl.col("caption").alias("prompt"), text.alias("text"), "references",
    )  # fmt: skip
