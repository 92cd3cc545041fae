"""A run dir as the image and tag stages leave it, for training tests: bucket-sized
images, `buckets/` and `tag/` with their manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from kohaku.stage import build_stage, write_manifest
from tests.train.test_data import captions_frame

COLUMNS = ["id", "path", "orig_w", "orig_h", "bucket_w", "bucket_h", "resized_w", "resized_h",
           "crop_left", "crop_top"]  # fmt: skip


def write_training_run(run: Path, n: int = 8, buckets=((64, 64), (64, 32)), seed: int = 0) -> Path:
    """`n` posts spread over `buckets`, each a random picture of its bucket's size."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pid, (w, h) = 100 + i, buckets[i % len(buckets)]
        path = Path("download/images") / f"{pid}.png"
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(run / path)
        rows.append((pid, str(path), 2 * w, 2 * h, w, h, w, h, 0, 0))
    frames = {
        "buckets": ("manifest.parquet", pl.DataFrame(rows, schema=COLUMNS, orient="row")),
        "tag": ("captions.parquet", captions_frame([r[0] for r in rows])),
    }
    for stage, (name, frame) in frames.items():
        with build_stage(run, stage) as build:
            frame.write_parquet(build.dir / name)
            write_manifest(build, stage_version="1", config_hash="handmade", inputs={},
                           outputs={stage: name}, counts={}, versions={})  # fmt: skip
    return run
