"""The buckets stage over a hand-made download stage: image list, histogram, chart, reuse."""

from __future__ import annotations

import base64
import io
import re

import polars as pl
import pytest
from PIL import Image

from kohaku.buckets.histogram import PNG_SIZE, histogram_markdown, histogram_png
from kohaku.buckets.run import run_buckets
from kohaku.download import LEDGER_SCHEMA
from kohaku.download.config import BucketConfig
from kohaku.download.placement import bucket_set, place
from kohaku.errors import InputError
from kohaku.stage import build_stage, read_manifest, write_manifest

BUCKETS = bucket_set(BucketConfig())
# (id, status, original size, shard); id 5 is ok in its ledger but its file gets deleted
POSTS = [
    (3, "ok", (2000, 2000), 0),
    (1, "ok", (1000, 1500), 0),
    (2, "failed", None, 0),
    (5, "ok", (1500, 1000), 0),
    (1002, "ok", (3000, 2000), 1),
    (7, "ok", (1800, 1800), 1),
]
EXPECTED_HIST = {"832x1216": 1, "1024x1024": 2, "1216x832": 1}


def ledger_row(post_id: int, status: str, size: tuple[int, int] | None) -> dict:
    row = {k: None for k in LEDGER_SCHEMA} | {"id": post_id, "status": status, "bytes": 10}
    if size is None:
        return row | {"error": "HTTP 404"}
    p = place(*size, BucketConfig(), BUCKETS)
    return row | {
        "path": f"images/{post_id % 1000:03d}/{post_id}.webp",
        "orig_w": size[0], "orig_h": size[1], "bucket_w": p.bucket.width,
        "bucket_h": p.bucket.height, "resized_w": p.resized[0], "resized_h": p.resized[1],
        "crop_left": p.crop_left, "crop_top": p.crop_top,
    }  # fmt: skip


def download_stage(run_dir, posts=POSTS) -> None:
    """A finished download stage: tiny image files, two shard ledgers, the manifest."""
    with build_stage(run_dir, "download") as build:
        (build.dir / "ledgers").mkdir()
        for shard in sorted({s for *_, s in posts}):
            rows = [ledger_row(i, st, size) for i, st, size, s in posts if s == shard]
            ledger = pl.DataFrame(rows, schema=LEDGER_SCHEMA)
            ledger.write_parquet(build.dir / "ledgers" / f"shard-{shard:05d}.parquet")
            for path in ledger.filter(pl.col("status") == "ok")["path"]:
                (build.dir / path).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), "red").save(build.dir / path)
        write_manifest(build, stage_version="1", config_hash="handmade", inputs={},
                       outputs={"ledgers": "ledgers/", "images": "images/"}, counts={},
                       versions={})  # fmt: skip
    (run_dir / "download" / "images" / "005" / "5.webp").unlink()


@pytest.fixture
def run_dir(tmp_path):
    download_stage(tmp_path)
    return tmp_path


def test_image_list(run_dir):
    manifest = run_buckets(run_dir)
    frame = pl.read_parquet(run_dir / "buckets" / manifest.outputs["manifest"])
    assert frame["id"].to_list() == [1, 3, 7, 1002]  # failed 2 and missing 5 left out
    assert frame.schema["id"] == pl.Int64
    assert all(frame.schema[c] == pl.Int32 for c in frame.columns if c not in ("id", "path"))
    assert frame["path"][0] == "download/images/001/1.webp"
    assert all((run_dir / p).is_file() for p in frame["path"])
    first = frame.row(0, named=True)
    assert (first["orig_w"], first["orig_h"], first["bucket_w"], first["bucket_h"]) == (
        1000, 1500, 832, 1216,
    )  # fmt: skip
    assert (first["resized_w"], first["resized_h"], first["crop_left"], first["crop_top"]) == (
        832, 1248, 0, 16,
    )  # fmt: skip


def test_counts_and_histogram_order(run_dir):
    counts = run_buckets(run_dir).counts
    assert (counts["images"], counts["missing"], counts["buckets"]) == (4, 1, 3)
    assert list(counts["histogram"].items()) == list(EXPECTED_HIST.items())
    reread = read_manifest(run_dir / "buckets").counts["histogram"]
    assert list(reread) == list(EXPECTED_HIST)  # order survives the JSON round trip


def test_histogram_png_and_markdown(run_dir):
    manifest = run_buckets(run_dir)
    png = (run_dir / "buckets" / manifest.outputs["histogram"]).read_bytes()
    with Image.open(io.BytesIO(png)) as img:
        assert (img.format, img.size) == ("PNG", PNG_SIZE)
    assert histogram_png(EXPECTED_HIST) == png  # deterministic bytes

    md = histogram_markdown(png, EXPECTED_HIST)
    uri = re.search(r"!\[bucket histogram\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert uri and base64.b64decode(uri.group(1)) == png
    assert "| 832x1216 | 0.68 | 1 |" in md
    assert md.index("832x1216 |") < md.index("1024x1024 |") < md.index("1216x832 |")


@pytest.mark.parametrize("n", [0, 1, 300])
def test_histogram_png_any_number_of_buckets(n):
    hist = {f"{64 * (i + 1)}x512": i * 7 + 1 for i in range(n)}
    with Image.open(io.BytesIO(histogram_png(hist))) as img:
        assert img.size == PNG_SIZE
        img.load()


def test_rerun_reused_and_rebuilt_when_download_changes(run_dir):
    first = run_buckets(run_dir)
    assert run_buckets(run_dir) == first

    download_stage(run_dir, [p for p in POSTS if p[0] != 7])  # a newer download stage
    second = run_buckets(run_dir)
    assert second.created_at > first.created_at
    assert second.counts["histogram"] == {"832x1216": 1, "1024x1024": 1, "1216x832": 1}


def test_without_download_stage(tmp_path):
    with pytest.raises(InputError, match="no finished download stage.*kohaku download"):
        run_buckets(tmp_path)
