"""Download stage core: one shard of posts -> verified, resized images and a ledger.

Reads: a shard of the sample stage's posts (id, md5, file_ext, file_url) and image bytes
over HTTP (`kohaku.fetch`). Writes `<out>/images/<id % 1000:03d>/<id>.<format>`, each file
atomically (temporary name, then rename), and returns the shard's ledger: one row per post
with its status (`ok` or `failed`), the error, bytes fetched, source URL, output path and
the bucket placement (original size, bucket, resize, crop) that SDXL conditions on.
A rerun keeps the posts done before (their file still there) and retries the others.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from kohaku.buckets import Bucket, BucketConfig, bucket_set, place
from kohaku.fetch import FetchConfig, Fetcher
from kohaku.resize import Format, ImageRejected, decode, encode, fit

LEDGER_SCHEMA = {
    "id": pl.Int64, "status": pl.String, "error": pl.String, "bytes": pl.Int64,
    "source": pl.String, "path": pl.String, "orig_w": pl.Int32, "orig_h": pl.Int32,
    "bucket_w": pl.Int32, "bucket_h": pl.Int32, "resized_w": pl.Int32, "resized_h": pl.Int32,
    "crop_left": pl.Int32, "crop_top": pl.Int32,
}  # fmt: skip


class DownloadConfig(BaseModel):
    """How images are fetched, checked and resized."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    fetch: FetchConfig = Field(FetchConfig(), description="HTTP policy")
    url_template: str | None = Field(
        None, description="URL from {id}, {md5}, {md5_a} (md5[0:2]), {md5_b} (md5[2:4]), "
        "{ext}; empty = each post's file_url",
    )  # fmt: skip
    threads: int = Field(8, ge=1, description="downloads in flight per shard")
    verify_md5: bool = Field(True, description="refuse files whose md5 differs from metadata")
    max_pixels: int = Field(100_000_000, ge=1, description="larger images are refused")
    image_format: Format = Field("webp", description="output format: webp, jpeg or png")
    quality: int = Field(90, ge=1, le=100, description="WebP/JPEG quality")
    background: tuple[int, int, int] = Field((255, 255, 255), description="alpha flattened onto")
    buckets: BucketConfig = Field(BucketConfig(), description="aspect-ratio buckets")


def post_url(post: dict[str, Any], cfg: DownloadConfig) -> str | None:
    """The URL of a post's original file, or None when the metadata has none."""
    if cfg.url_template is None:
        return post.get("file_url") or None
    md5 = post.get("md5") or ""
    if not md5:
        return None
    return cfg.url_template.format(id=post["id"], md5=md5, md5_a=md5[:2], md5_b=md5[2:4],
                                   ext=post.get("file_ext") or "")  # fmt: skip


def image_path(post_id: int, cfg: DownloadConfig) -> Path:
    """Relative output path: ids are integers, so no metadata text reaches the path."""
    ext = "jpg" if cfg.image_format == "jpeg" else cfg.image_format
    return Path("images") / f"{int(post_id) % 1000:03d}" / f"{int(post_id)}.{ext}"


def download_shard(
    posts: pl.DataFrame, cfg: DownloadConfig, out_dir: Path, previous: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Process every post of the shard not already done; returns the whole ledger."""
    done = _still_done(previous, out_dir)
    todo = posts.filter(~pl.col("id").is_in(done["id"].implode()))
    buckets = bucket_set(cfg.buckets)
    with Fetcher(cfg.fetch) as fetcher, ThreadPoolExecutor(cfg.threads) as pool:
        rows = list(pool.map(lambda p: _process(p, cfg, fetcher, buckets, out_dir),
                             todo.iter_rows(named=True)))  # fmt: skip
    fresh = pl.DataFrame(rows, schema=LEDGER_SCHEMA) if rows else _empty_ledger()
    return pl.concat([done, fresh]).sort("id")


def _empty_ledger() -> pl.DataFrame:
    return pl.DataFrame(schema=LEDGER_SCHEMA)


def _still_done(previous: pl.DataFrame | None, out_dir: Path) -> pl.DataFrame:
    if previous is None or previous.is_empty():
        return _empty_ledger()
    ok = previous.filter(pl.col("status") == "ok")
    exists = [(out_dir / p).is_file() for p in ok["path"]]
    return ok.filter(pl.Series(exists, dtype=pl.Boolean)).cast(LEDGER_SCHEMA)


def _process(post: dict, cfg: DownloadConfig, fetcher: Fetcher, buckets: list[Bucket],
             out_dir: Path) -> dict:  # fmt: skip
    row: dict[str, Any] = dict.fromkeys(LEDGER_SCHEMA)
    row["id"], url = post["id"], post_url(post, cfg)
    row["source"] = url
    if url is None:
        return {**row, "status": "failed", "error": "no URL in the metadata"}
    result = fetcher.fetch(url)
    if not result.ok:
        return {**row, "status": "failed", "error": result.error}
    row["bytes"] = len(result.data)
    try:
        return {**row, **_store(result.data, post, cfg, buckets, out_dir), "status": "ok"}
    except ImageRejected as exc:
        return {**row, "status": "failed", "error": str(exc)}


def _store(data: bytes, post: dict, cfg: DownloadConfig, buckets: list[Bucket],
           out_dir: Path) -> dict:  # fmt: skip
    """Verify, resize, encode and write one image; returns its ledger fields."""
    expected = (post.get("md5") or "").lower()
    if cfg.verify_md5 and expected:
        actual = hashlib.md5(data).hexdigest()
        if actual != expected:
            raise ImageRejected(f"md5 {actual} differs from metadata {expected}")
    img = decode(data, cfg.max_pixels, cfg.background)
    p = place(img.width, img.height, cfg.buckets, buckets)
    encoded = encode(fit(img, p), cfg.image_format, cfg.quality)
    rel = image_path(post["id"], cfg)
    _write_atomic(out_dir / rel, encoded)
    return {
        "path": str(rel), "orig_w": p.original[0], "orig_h": p.original[1],
        "bucket_w": p.bucket.width, "bucket_h": p.bucket.height, "resized_w": p.resized[0],
        "resized_h": p.resized[1], "crop_left": p.crop_left, "crop_top": p.crop_top,
    }  # fmt: skip


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
