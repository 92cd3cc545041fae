"""Config of the tag stage: quality, rating and date tags, tag text rules, caption layout,
an optional natural-language caption file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kohaku.sample.config import Rating

Layout = Literal["delta", "epsilon", "hakubooru"]
Normalize = Literal["rating", "rating_year", "rating_decay"]
QUALITY_TAGS = [
    "masterpiece", "best quality", "great quality", "good quality",
    "normal quality", "low quality", "worst quality",
]  # fmt: skip
# HakuBooru's count ("special") tags; `no_humans` is a count tag in the Kohaku XL recipes.
HAKUBOORU_COUNT_TAGS = [
    "1girl", "2girls", "3girls", "4girls", "5girls", "6+girls", "multiple_girls",
    "1boy", "2boys", "3boys", "4boys", "5boys", "6+boys", "multiple_boys", "male_focus",
    "1other", "2others", "3others", "4others", "5others", "6+others", "multiple_others",
]  # fmt: skip
META_DROP_KEYWORDS = [
    "(medium)", "commentary", "bad", "translat", "request", "mismatch", "revision", "audio",
    "video",
]  # fmt: skip


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DateTag(_Model):
    """Posts uploaded in [first_year, last_year] get `tag`."""

    first_year: int = Field(description="first upload year of the span")
    last_year: int | None = Field(None, description="last year; empty = no end")
    tag: str = Field(description="the date tag")


DATE_TAGS = [
    DateTag(first_year=2005, last_year=2010, tag="old"),
    DateTag(first_year=2011, last_year=2014, tag="early"),
    DateTag(first_year=2015, last_year=2017, tag="mid"),
    DateTag(first_year=2018, last_year=2020, tag="recent"),
    DateTag(first_year=2021, last_year=None, tag="newest"),
]


class QualityConfig(_Model):
    """Quality tags from the percentile of fav_count within each rating (and, optionally,
    upload year or an age decay; README "Tag stage" says which models did what)."""

    enabled: bool = Field(True, description="add quality tags")
    percentiles: list[float] = Field(
        [95, 85, 75, 50, 25, 10],
        description="percentile thresholds, high to low; N thresholds make N+1 levels",
    )
    tags: list[str] = Field(QUALITY_TAGS, description="quality tags, best to worst")
    table: dict[Rating, list[int]] | None = Field(
        None,
        description="fav_count thresholds per rating, one per percentile (high to low); "
        "empty = computed over the whole metadata population",
    )
    normalize: Normalize = Field(
        "rating",
        description="rank fav_count within each rating (the Kohaku XL recipes), within "
        "rating x upload year (rating_year), or within each rating after multiplying it by "
        "decay_per_year per year of age (rating_decay, NoobAI-XL's way)",
    )
    min_posts_per_bin: int = Field(
        1000,
        ge=1,
        description="rating_year: a rating's years are pooled, oldest first, until a bin "
        "holds this many posts; a short last bin joins the one before it",
    )
    decay_per_year: float | None = Field(
        None,
        gt=0,
        le=1,
        description="rating_decay: fav_count x decay_per_year ** (snapshot year - upload "
        "year); required there (NoobAI-XL published no value)",
    )
    min_age_days: float | None = Field(
        None, ge=0, description="posts younger than this at the metadata snapshot get none"
    )
    max_post_id: int | None = Field(
        None, ge=0, description="posts with a larger id get none (HakuBooru's rule)"
    )

    @model_validator(mode="after")
    def _check(self) -> QualityConfig:
        p = self.percentiles
        if any(not 0 < x < 100 for x in p):
            raise ValueError(f"tag.quality.percentiles {p} must lie strictly between 0 and 100")
        if any(a <= b for a, b in zip(p, p[1:], strict=False)):
            raise ValueError(f"tag.quality.percentiles {p} must be strictly descending")
        if len(self.tags) != len(p) + 1:
            raise ValueError(f"tag.quality.tags needs {len(p) + 1} tags for {len(p)} thresholds")
        if self.table is not None and self.normalize != "rating":
            raise ValueError(
                f"tag.quality.table gives thresholds per rating only; normalize = "
                f"{self.normalize!r} computes them from the histogram: drop one of the two"
            )
        if self.normalize == "rating_decay" and self.decay_per_year is None:
            raise ValueError(
                "tag.quality.normalize = 'rating_decay' needs tag.quality.decay_per_year "
                "in (0, 1], e.g. 0.9"
            )
        for rating, values in (self.table or {}).items():
            if len(values) != len(p):
                raise ValueError(f"tag.quality.table[{rating}] needs {len(p)} thresholds")
            if any(a < b for a, b in zip(values, values[1:], strict=False)):
                raise ValueError(f"tag.quality.table[{rating}] {values} must not increase")
        return self


class TagConfig(_Model):
    """How captions are built from a post's tags and metadata."""

    layout: Layout = Field("epsilon", description="caption layout: delta, epsilon or hakubooru")
    quality: QualityConfig = Field(QualityConfig(), description="quality tags")
    underscores_to_spaces: bool = Field(True, description="`long_hair` -> `long hair`")
    short_tag_max_len: int = Field(
        3, ge=0, description="tags this short keep underscores (emoticons like ^_^)"
    )
    escape_brackets: bool = Field(
        False, description="`ask (askzy)` -> `ask \\(askzy\\)` (sd-webui)"
    )
    tag_order: Literal["relation", "name"] = Field(
        "relation", description="order inside a group: metadata row order, or by name"
    )
    count_tags: list[str] | None = Field(
        None, description="general tags that lead the caption; empty = the layout's own set"
    )
    meta_drop_keywords: list[str] = Field(
        META_DROP_KEYWORDS, description="meta tags containing any of these are dropped"
    )
    artist_drop_keywords: list[str] = Field(
        ["banned"], description="artist tags containing any of these are dropped"
    )
    rating_tags: dict[Rating, list[str]] | None = Field(
        None, description="tags per rating; empty = the layout's own"
    )
    date_tags: list[DateTag] = Field(DATE_TAGS, description="date tags by upload year")
    text_captions: Path | None = Field(
        None, description="natural-language captions joined by post id: a parquet or JSON "
        "lines file with columns id (integer) and text (string), e.g. the danbooru2023 "
        "Florence-2 captions; the trainer mixes them with the tags (train.captions.p_text, "
        "p_both); empty = tags only",
    )  # fmt: skip

    def resolved_count_tags(self) -> list[str]:
        if self.count_tags is not None:
            return self.count_tags
        extra = [] if self.layout == "hakubooru" else ["no_humans"]
        return HAKUBOORU_COUNT_TAGS + extra

    def resolved_rating_tags(self) -> dict[str, list[str]]:
        if self.rating_tags is not None:
            return dict(self.rating_tags)
        explicit = ["explicit", "nsfw"] if self.layout == "hakubooru" else ["nsfw", "explicit"]
        return {"general": ["safe"], "sensitive": ["sensitive"], "questionable": ["nsfw"],
                "explicit": explicit}  # fmt: skip
