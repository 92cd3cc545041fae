"""The download stage's config: where images come from, how they are checked, resized and
stored, and the aspect-ratio bucket set they are fitted to (`[download]`,
`[download.fetch]`, `[download.buckets]`). Reads and writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kohaku.fetch import FetchConfig, fetch_policy

Format = Literal["webp", "jpeg", "png"]
Library = Literal["pyvips", "pillow"]


class BucketConfig(BaseModel):
    """The bucket set: sides in steps of `step` between `min_side` and `max_side`, with
    about `area` pixels each."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    area: int = Field(1024 * 1024, ge=64 * 64, description="target pixels per bucket")
    min_side: int = Field(256, ge=8, description="smallest bucket side")
    max_side: int = Field(4096, ge=8, description="largest bucket side")
    step: int = Field(64, ge=8, description="bucket sides are multiples of this")
    upscale: bool = Field(False, description="enlarge images smaller than their bucket")

    @model_validator(mode="after")
    def _check(self) -> BucketConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} is larger than max_side {self.max_side}")
        for name in ("min_side", "max_side"):
            if getattr(self, name) % self.step:
                raise ValueError(f"{name} {getattr(self, name)} is not a multiple of step")
        if self.min_side * self.min_side > self.area or self.max_side * self.max_side < self.area:
            raise ValueError(f"area {self.area} cannot be reached with sides in "
                             f"[{self.min_side}, {self.max_side}]")  # fmt: skip
        return self


SourceKind = Literal["http", "folder", "tar"]
# the download's own HTTP defaults (FetchConfig's), which `[download.fetch]` overrides
# field by field
DOWNLOAD_FETCH = FetchConfig()
DownloadFetch = fetch_policy(DOWNLOAD_FETCH)


class DownloadConfig(BaseModel):
    """Where images come from and how they are checked and resized."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    source: SourceKind = Field(
        "http", description="http (each post's file_url or url_template), folder "
        "(<id>.<ext> files under source_path) or tar (data-NNNN.tar shards in source_path)",
    )  # fmt: skip
    source_path: Path | None = Field(None, description="the folder for folder and tar sources")
    fetch: DownloadFetch = Field(
        DOWNLOAD_FETCH, description="HTTP policy; fields not given keep these defaults"
    )
    url_template: str | None = Field(
        None, description="URL from {id}, {md5}, {md5_a} (md5[0:2]), {md5_b} (md5[2:4]), "
        "{ext}; empty = each post's file_url",
    )  # fmt: skip
    threads: int = Field(8, ge=1, description="posts in flight per shard")
    verify_md5: bool = Field(
        True, description="refuse files whose md5 differs from the metadata (checked when the "
        "file is the original: HTTP, or a local file in the metadata's format)",
    )  # fmt: skip
    max_pixels: int = Field(100_000_000, ge=1, description="larger images are refused")
    jpeg_draft: bool = Field(True, description="decode big JPEGs at a reduced DCT scale that "
                             "still covers twice the target size (faster; Lanczos then keeps "
                             "the detail a draft at the target size loses)")  # fmt: skip
    resize_library: Library = Field(
        "pyvips", description="decode + resize with pyvips (libvips: 2.5x less CPU than "
        "Pillow at the same quality; JPEG, PNG, WebP and GIF, other formats go through "
        "Pillow) or pillow (everything through Pillow); both Lanczos-3, same geometry",
    )  # fmt: skip
    image_format: Format = Field("webp", description="output format: webp, jpeg or png")
    quality: int = Field(90, ge=1, le=100, description="WebP/JPEG quality")
    background: tuple[int, int, int] = Field((255, 255, 255), description="alpha flattened onto")
    sidecars: bool = Field(False, description="also write <id>.txt (the tag stage's caption) "
                           "next to each image, for kohya-style trainers")  # fmt: skip
    buckets: BucketConfig = Field(BucketConfig(), description="aspect-ratio buckets")

    @model_validator(mode="after")
    def _check_source(self) -> DownloadConfig:
        if self.source == "http" and self.source_path is not None:
            raise ValueError("source_path is only for source = 'folder' or 'tar'")
        if self.source != "http" and self.source_path is None:
            raise ValueError(f"source = {self.source!r} needs source_path (the folder)")
        return self
