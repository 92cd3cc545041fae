"""Config of the sample stage (which posts, from which metadata, with which filters)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Rating = Literal["general", "sensitive", "questionable", "explicit"]
RATINGS: tuple[Rating, ...] = ("general", "sensitive", "questionable", "explicit")
MAX_ID = 2**32 - 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


TAG_QUERY = ("any_tags", "required_tags", "excluded_tags")


class IdRange(_Model):
    """Posts with start <= id < end; `count` of them are drawn at random (or all).

    A range with a tag query (`any_tags`, `required_tags`, `excluded_tags`) is a subset:
    its candidates are the posts of the id range that match the query, it needs a `name`
    (which keys its draw, so adding another subset never changes it), and it may overlap
    any other range. Plain ranges (no query) are drawn by the seed alone and must not
    overlap each other. `sample.filters` apply to every range."""

    name: str | None = Field(
        None, min_length=1, max_length=100, description="name of the range in the manifest and "
        "posts.parquet (`subset`); needed with a tag query; empty = its id range, e.g. [0, 10)",
    )  # fmt: skip
    start: int = Field(0, ge=0, le=MAX_ID, description="first post id of the range")
    end: int | None = Field(
        None, ge=1, le=MAX_ID + 1, description="end of the range, exclusive; empty = no end"
    )
    count: int | Literal["all"] = Field("all", description="posts to draw, or 'all'")
    repeats: int = Field(
        1, ge=1, description="times each chosen post is shown per epoch (the train stage)"
    )
    any_tags: list[str] | None = Field(
        None, description="danbooru tag names (artists, series, characters or any tag): "
        "candidates have at least one of them; empty = no such constraint",
    )  # fmt: skip
    required_tags: list[str] | None = Field(
        None, description="danbooru tag names candidates must all have; empty = none"
    )
    excluded_tags: list[str] | None = Field(
        None, description="danbooru tag names candidates must not have; empty = none"
    )

    @field_validator(*TAG_QUERY)
    @classmethod
    def _not_empty(cls, tags: list[str] | None) -> list[str] | None:
        if tags is not None and not tags:
            raise ValueError("an empty tag list: give at least one tag, or leave the field out")
        return tags

    @model_validator(mode="after")
    def _check(self) -> IdRange:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"id range [{self.start}, {self.end}) is empty: end must be > start")
        if isinstance(self.count, int) and self.count < 1:
            raise ValueError(f"count {self.count} must be >= 1 or 'all'")
        if self.tagged and self.name is None:
            raise ValueError(f"range {self.label()} has a tag query: give it a `name` (it names "
                             "the subset in the manifest and keys its draw)")  # fmt: skip
        excluded = set(self.excluded_tags or ())
        both = excluded & set((self.required_tags or []) + (self.any_tags or []))
        if both:
            raise ValueError(f"tags both wanted and excluded: {sorted(both)}")
        return self

    @property
    def tagged(self) -> bool:
        """True for a subset: a range with a tag query."""
        return any(getattr(self, f) is not None for f in TAG_QUERY)

    @property
    def stop(self) -> int:
        return MAX_ID + 1 if self.end is None else self.end

    @property
    def key(self) -> str:
        """The range's name, or its id range: the `subset` of its posts."""
        return self.name if self.name is not None else self.label()

    def label(self) -> str:
        return f"[{self.start}, {'end' if self.end is None else self.end})"

    def describe(self) -> str:
        """How messages name the range: `range [0, 10)` or `subset 'artists' [0, end)`."""
        return f"range {self.label()}" if self.name is None else \
            f"subset {self.name!r} {self.label()}"  # fmt: skip


class FilterConfig(_Model):
    """Which posts may be drawn; each filter's rejections are counted in the manifest."""

    drop_deleted: bool = Field(True, description="drop posts with is_deleted")
    drop_banned: bool = Field(True, description="drop posts with is_banned")
    drop_restricted: bool = Field(
        True, description="drop posts without md5 or file_url (gold-only or banned files)"
    )
    image_exts: list[str] = Field(
        ["jpg", "jpeg", "png", "webp", "avif"],
        min_length=1,
        description="file extensions kept (still images); gif, mp4, webm, zip, swf are dropped",
    )
    ratings: list[Rating] = Field(list(RATINGS), min_length=1, description="ratings kept")
    min_pixels: int | None = Field(None, ge=1, description="minimum width*height")
    max_pixels: int | None = Field(None, ge=1, description="maximum width*height")
    min_aspect: float | None = Field(None, gt=0, description="minimum width/height")
    max_aspect: float | None = Field(None, gt=0, description="maximum width/height")
    min_score: int | None = Field(None, description="minimum post score")
    required_tags: list[str] = Field([], description="danbooru tag names a post must all have")
    excluded_tags: list[str] = Field([], description="danbooru tag names a post must not have")

    @model_validator(mode="after")
    def _check(self) -> FilterConfig:
        for lo, hi in (("min_pixels", "max_pixels"), ("min_aspect", "max_aspect")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"filters.{lo} ({a}) is larger than filters.{hi} ({b})")
        both = set(self.required_tags) & set(self.excluded_tags)
        if both:
            raise ValueError(f"tags both required and excluded: {sorted(both)}")
        return self


class SampleConfig(_Model):
    """Seeded post selection over the danbooru metadata."""

    source: Path = Field(
        description="danbooru2023 SQLite file, a folder of parquet exports "
        "(post, tag, posttagrelation), a folder of /posts.json pages, or a metadata store "
        "(`kohaku metadata import`)"
    )
    source_format: Literal["auto", "sqlite", "parquet", "api_json", "store"] = Field(
        "auto", description="format of `source`; auto looks at the path"
    )
    snapshot: str = Field(
        "latest",
        description="metadata store only: the snapshot to read, `latest` or an id such as "
        "20261203-0123456789ab (the sample manifest records the id it read)",
    )
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the random selection")
    ranges: list[IdRange] = Field(
        [IdRange()], description="id ranges and subsets, each with a count of posts to draw "
        "and its repeats per epoch; plain ranges must not overlap, subsets (ranges with a tag "
        "query) may: a post drawn by several is written once, with the largest repeats",
    )  # fmt: skip
    filters: FilterConfig = Field(FilterConfig(), description="post filters")
    filter_timing: Literal["before_sampling", "after_sampling"] = Field(
        "before_sampling",
        description="before_sampling: draw `count` posts among those passing the filters; "
        "after_sampling: draw `count` posts, then filter (how the Kohaku XL recipes counted)",
    )
    on_short_range: Literal["error", "take_all"] = Field(
        "error", description="when a range holds fewer posts than its count: fail, or take all"
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> SampleConfig:
        if not self.ranges:
            raise ValueError("sample.ranges is empty: give at least one [[sample.ranges]] "
                             "(an id range, or a subset with a tag query)")  # fmt: skip
        plain = sorted((r for r in self.ranges if not r.tagged), key=lambda r: r.start)
        for a, b in zip(plain, plain[1:], strict=False):
            if b.start < a.stop:
                raise ValueError(f"id ranges {a.label()} and {b.label()} overlap")
        keys = [r.key for r in self.ranges]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"range names given more than once: {twice}")
        return self

    @property
    def has_subsets(self) -> bool:
        """Whether some range has a tag query (and so ranges may overlap)."""
        return any(r.tagged for r in self.ranges)
