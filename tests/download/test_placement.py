"""Bucket set, nearest bucket and placement (resize + centre crop) on edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from kohaku.download.config import BucketConfig
from kohaku.download.placement import Bucket, bucket_set, nearest, nearest_many, place

CFG = BucketConfig()
BUCKETS = bucket_set(CFG)


def test_default_bucket_set_follows_the_rules():
    assert Bucket(1024, 1024) in BUCKETS and Bucket(832, 1216) in BUCKETS
    for b in BUCKETS:
        assert b.width % 64 == 0 and b.height % 64 == 0
        assert 256 <= b.width <= 4096 and 256 <= b.height <= 4096
        assert b.width * b.height <= 1024 * 1024
        # the largest height for this width: one more step would exceed the area
        assert b.height == 4096 or b.width * (b.height + 64) > 1024 * 1024
    assert len(set(BUCKETS)) == len(BUCKETS)
    ratios = [b.width / b.height for b in BUCKETS]
    assert ratios == sorted(ratios)
    assert min(ratios) == 256 / 4096 and max(ratios) == 4096 / 256


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1024, 1024), Bucket(1024, 1024)),
        ((3000, 3000), Bucket(1024, 1024)),
        ((832, 1216), Bucket(832, 1216)),
        ((1216, 832), Bucket(1216, 832)),
        ((100, 10_000), Bucket(256, 4096)),  # beyond the most extreme ratio
        ((10_000, 100), Bucket(4096, 256)),
    ],
)
def test_nearest(size, expected):
    assert nearest(*size, BUCKETS) == expected


def test_nearest_many_equals_brute_force():
    rng = np.random.default_rng(0)
    w, h = rng.integers(50, 9000, 2000), rng.integers(50, 9000, 2000)
    got = nearest_many(w, h, BUCKETS)
    for i in range(len(w)):
        target = math.log(w[i] / h[i])
        best = min(abs(target - b.log_aspect) for b in BUCKETS)
        assert abs(target - BUCKETS[got[i]].log_aspect) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("size", [(2000, 3000), (4000, 1000), (1025, 1023), (6000, 6000)])
def test_place_large_images_cover_the_bucket_and_crop_centred(size):
    p = place(*size, CFG, BUCKETS)
    bw, bh = p.bucket.width, p.bucket.height
    rw, rh = p.resized
    assert rw >= bw and rh >= bh and (rw == bw or rh == bh)  # covers, one side exact
    assert rw / rh == pytest.approx(size[0] / size[1], rel=0.01)
    assert p.crop_left == (rw - bw) // 2 and p.crop_top == (rh - bh) // 2
    assert p.original == size
    assert rw <= size[0] and rh <= size[1]  # only ever shrunk


def test_small_image_is_not_upscaled_by_default():
    p = place(500, 500, CFG, BUCKETS)
    assert p.bucket == Bucket(448, 448)
    assert p.resized == (448, 448) and (p.crop_left, p.crop_top) == (0, 0)


def test_small_image_upscaled_on_request():
    p = place(500, 500, CFG.model_copy(update={"upscale": True}), BUCKETS)
    assert p.bucket == Bucket(1024, 1024) and p.resized == (1024, 1024)


def test_small_portrait_keeps_its_aspect_bucket_shape():
    p = place(600, 900, CFG, BUCKETS)
    assert p.bucket.width <= 600 and p.bucket.height <= 900
    assert p.bucket.width % 64 == 0 and p.bucket.height % 64 == 0
    assert p.resized[0] >= p.bucket.width and p.resized[1] >= p.bucket.height


def test_tiny_image_gets_the_smallest_bucket():
    p = place(20, 30, CFG, BUCKETS)
    assert p.bucket == Bucket(64, 64)


def test_empty_size_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        place(0, 10, CFG, BUCKETS)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"min_side": 512, "max_side": 256}, "larger than max_side"),
        ({"min_side": 250}, "not a multiple of step"),
        ({"area": 100 * 100, "min_side": 256}, "cannot be reached"),
        ({"bogus": 1}, "Extra inputs"),
    ],
)
def test_bad_bucket_configs(fields, fragment):
    with pytest.raises(ValidationError, match=fragment):
        BucketConfig(**fields)


def test_other_area_and_step():
    cfg = BucketConfig(area=512 * 512, min_side=128, max_side=1024, step=32)
    buckets = bucket_set(cfg)
    assert Bucket(512, 512) in buckets
    assert all(b.width % 32 == 0 and b.width * b.height <= 512 * 512 for b in buckets)
