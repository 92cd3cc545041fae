"""Aspect-ratio buckets (pure functions): where the download stage fits each image.

Reads nothing and writes nothing: it turns a bucket config into a bucket set, picks the
bucket of closest aspect ratio for an image size, and computes the resize and centre
crop that fit the image into it. SDXL conditions on the original size and the crop's
top-left corner, so both are part of the result (`Placement`). The placement is made once,
as the image is resized (`shard`); the buckets stage gathers the placements from the ledgers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kohaku.download.config import BucketConfig


@dataclass(frozen=True)
class Bucket:
    width: int
    height: int

    @property
    def log_aspect(self) -> float:
        return math.log(self.width / self.height)


@dataclass(frozen=True)
class Placement:
    """How an image of `original` size lands in `bucket`: resized to `resized`, then
    cropped at (`crop_left`, `crop_top`) to the bucket size."""

    bucket: Bucket
    original: tuple[int, int]
    resized: tuple[int, int]
    crop_left: int
    crop_top: int


def bucket_set(cfg: BucketConfig) -> list[Bucket]:
    """Every (width, height) with width a multiple of `step` in [min_side, max_side] and
    the largest height (multiple of `step`, within the sides) keeping width*height <= area;
    sorted by aspect ratio, no duplicates."""
    out = set()
    for width in range(cfg.min_side, cfg.max_side + 1, cfg.step):
        height = min(cfg.max_side, cfg.area // width // cfg.step * cfg.step)
        if height >= cfg.min_side:
            out.add(Bucket(width, height))
    return sorted(out, key=lambda b: (b.width / b.height, b.width))


def nearest(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest to width/height (in log space, so 2:1 and
    1:2 are equally far from 1:1)."""
    index = int(nearest_many(np.array([width]), np.array([height]), buckets)[0])
    return buckets[index]


def nearest_many(widths: np.ndarray, heights: np.ndarray, buckets: list[Bucket]) -> np.ndarray:
    """Index into `buckets` of the closest aspect ratio for each size (vectorised)."""
    aspects = np.array([b.log_aspect for b in buckets])
    order = np.argsort(aspects)
    sorted_aspects = aspects[order]
    target = np.log(np.asarray(widths, float) / np.asarray(heights, float))
    hi = np.clip(np.searchsorted(sorted_aspects, target), 1, len(buckets) - 1)
    lo = hi - 1
    pick = np.where(target - sorted_aspects[lo] <= sorted_aspects[hi] - target, lo, hi)
    return order[pick] if len(buckets) > 1 else np.zeros(len(target), dtype=int)


def place(width: int, height: int, cfg: BucketConfig, buckets: list[Bucket]) -> Placement:
    """Bucket, resize and centre crop of one image. Without `upscale`, an image smaller
    than its bucket gets a bucket of its own size (sides rounded down to `step`)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height} is empty")
    bucket = nearest(width, height, buckets)
    scale = max(bucket.width / width, bucket.height / height)
    if scale > 1 and not cfg.upscale:
        bucket = _own_size_bucket(width, height, bucket, cfg)
        scale = max(bucket.width / width, bucket.height / height)
    resized = (max(bucket.width, round(width * scale)), max(bucket.height, round(height * scale)))
    return Placement(
        bucket=bucket, original=(width, height), resized=resized,
        crop_left=(resized[0] - bucket.width) // 2, crop_top=(resized[1] - bucket.height) // 2,
    )  # fmt: skip


def _own_size_bucket(width: int, height: int, near: Bucket, cfg: BucketConfig) -> Bucket:
    """The largest bucket of `near`'s aspect ratio that fits inside the image, sides
    multiples of `step` and at least `step` (tiny images still get the smallest one)."""
    shrink = min(width / near.width, height / near.height)
    w = max(cfg.step, int(near.width * shrink) // cfg.step * cfg.step)
    h = max(cfg.step, int(near.height * shrink) // cfg.step * cfg.step)
    return Bucket(w, h)
