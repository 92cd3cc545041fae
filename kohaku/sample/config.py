"""Config of the sample stage (which posts, from which metadata, with which filters)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Rating = Literal["general", "sensitive", "questionable", "explicit"]
RATINGS: tuple[Rating, ...] = ("general", "sensitive", "questionable", "explicit")
MAX_ID = 2**32 - 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IdRange(_Model):
    """Posts with start <= id < end; `count` of them are drawn at random (or all)."""

    start: int = Field(0, ge=0, le=MAX_ID, description="first post id of the range")
    end: int | None = Field(
        None, ge=1, le=MAX_ID + 1, description="end of the range, exclusive; empty = no end"
    )
    count: int | Literal["all"] = Field("all", description="posts to draw, or 'all'")

    @model_validator(mode="after")
    def _check(self) -> IdRange:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"id range [{self.start}, {self.end}) is empty: end must be > start")
        if isinstance(self.count, int) and self.count < 1:
            raise ValueError(f"count {self.count} must be >= 1 or 'all'")
        return self

    @property
    def stop(self) -> int:
        return MAX_ID + 1 if self.end is None else self.end

    def label(self) -> str:
        return f"[{self.start}, {'end' if self.end is None else self.end})"


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
        [IdRange()], min_length=1, description="id ranges, each with a count of posts to draw"
    )
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
    def _ranges_disjoint(self) -> SampleConfig:
        ordered = sorted(self.ranges, key=lambda r: r.start)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.start < a.stop:
                raise ValueError(f"id ranges {a.label()} and {b.label()} overlap")
        return self
