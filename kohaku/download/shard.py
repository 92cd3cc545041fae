"""Download stage core: one shard of posts -> verified, resized images and a ledger.

Reads: a shard of the sample stage's posts (id, md5, file_ext, file_url; `caption` when
sidecars are asked for) and each post's image bytes, over HTTP (`kohaku.fetch`) or from a
local folder or tar shards (`kohaku.download.sources`, entries joined onto the posts).
Writes `<out>/images/<id % 1000:03d>/<id>.<format>` (and `<id>.txt`, the caption, for
kohya-style trainers), each file atomically (temporary name, then rename); appends each
finished post to a journal (JSON lines) so a killed shard resumes where it stopped; returns
the shard's ledger: one row per post with its status (`ok` or `failed`), the error (a stable
text, the same for the same failure, without addresses, paths or per-file numbers), bytes
read, source, output path, whether the md5 was checked, and the bucket placement
(original size, bucket, resize, crop) that SDXL conditions on. A rerun keeps the posts
done before (their files still there) and retries the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from kohaku.download.config import DownloadConfig
from kohaku.download.placement import Bucket, bucket_set, place
from kohaku.download.reasons import ImageRejected
from kohaku.download.resize import Options, fit_encoded
from kohaku.download.sources import LocalReader
from kohaku.fetch import Fetcher
from kohaku.stage import atomic_write_bytes

LEDGER_SCHEMA = {
    "id": pl.Int64, "status": pl.String, "error": pl.String, "bytes": pl.Int64,
    "source": pl.String, "path": pl.String, "md5_checked": pl.Boolean,
    "orig_w": pl.Int32, "orig_h": pl.Int32, "bucket_w": pl.Int32, "bucket_h": pl.Int32,
    "resized_w": pl.Int32, "resized_h": pl.Int32, "crop_left": pl.Int32, "crop_top": pl.Int32,
}  # fmt: skip


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


def caption_path(post_id: int, cfg: DownloadConfig) -> Path:
    return image_path(post_id, cfg).with_suffix(".txt")


@dataclass
class Acquired:
    source: str | None
    data: bytes | None = None
    error: str | None = None
    original: bool = True  # the file as danbooru stores it, so its md5 can be checked


class Journal:
    """Append-only JSON lines of finished ledger rows: what a killed shard already did."""

    def __init__(self, path: Path | None):
        self.path, self.lock = path, threading.Lock()

    def append(self, row: dict) -> None:
        if self.path is None:
            return
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_journal(path: Path) -> pl.DataFrame:
    """The rows of a journal; a line cut short by a kill is ignored."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pl.DataFrame(rows, schema=LEDGER_SCHEMA) if rows else _empty_ledger()


def merge_previous(ledger: pl.DataFrame | None, journal: pl.DataFrame) -> pl.DataFrame:
    """An earlier ledger updated with the journal's newer rows."""
    base = _empty_ledger() if ledger is None else ledger.select(list(LEDGER_SCHEMA))
    base = base.cast(LEDGER_SCHEMA)
    return pl.concat([base, journal]).unique("id", keep="last", maintain_order=True)


def download_shard(
    posts: pl.DataFrame,
    cfg: DownloadConfig,
    out_dir: Path,
    previous: pl.DataFrame | None = None,
    *,
    journal: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> pl.DataFrame:
    """Process every post of the shard not already done; returns the whole ledger.
    For local sources `posts` carries the chosen index entry (`kohaku.download.sources`)."""
    done = _still_done(previous, out_dir, cfg)
    todo = posts.filter(~pl.col("id").is_in(done["id"].implode()))
    if progress is not None and done.height:
        progress(done.height)
    buckets, log = bucket_set(cfg.buckets), Journal(journal)
    rows = []
    with _acquirer(cfg) as acquire, ThreadPoolExecutor(cfg.threads) as pool:
        futures = [pool.submit(_process, p, cfg, acquire, buckets, out_dir)
                   for p in todo.iter_rows(named=True)]  # fmt: skip
        for future in as_completed(futures):
            rows.append(future.result())
            log.append(rows[-1])
            if progress is not None:
                progress(1)
    fresh = pl.DataFrame(rows, schema=LEDGER_SCHEMA) if rows else _empty_ledger()
    return pl.concat([done, fresh]).sort("id")


def _empty_ledger() -> pl.DataFrame:
    return pl.DataFrame(schema=LEDGER_SCHEMA)


def _still_done(previous: pl.DataFrame | None, out_dir: Path, cfg: DownloadConfig) -> pl.DataFrame:
    if previous is None or previous.is_empty():
        return _empty_ledger()
    ok = previous.filter(pl.col("status") == "ok").select(list(LEDGER_SCHEMA))
    exists = [(out_dir / p).is_file() and (not cfg.sidecars or
              (out_dir / caption_path(i, cfg)).is_file())
              for i, p in zip(ok["id"], ok["path"], strict=True)]  # fmt: skip
    return ok.filter(pl.Series(exists, dtype=pl.Boolean)).cast(LEDGER_SCHEMA)


class _acquirer:
    """Context manager giving `post -> Acquired` for the configured source."""

    def __init__(self, cfg: DownloadConfig):
        self.cfg, self.fetcher = cfg, None

    def __enter__(self) -> Callable[[dict], Acquired]:
        cfg = self.cfg
        if cfg.source == "http":
            self.fetcher = Fetcher(cfg.fetch).__enter__()
            return lambda post: _from_http(post, cfg, self.fetcher)
        reader = LocalReader(cfg.source, cfg.source_path, cfg.fetch.max_bytes)
        return lambda post: _from_local(post, reader)

    def __exit__(self, *exc: object) -> None:
        if self.fetcher is not None:
            self.fetcher.__exit__(*exc)


def _from_http(post: dict, cfg: DownloadConfig, fetcher: Fetcher) -> Acquired:
    url = post_url(post, cfg)
    if url is None:
        return Acquired(None, error="no URL in the metadata")
    result = fetcher.fetch(url)
    return Acquired(url, result.data, None if result.ok else result.error)


def _from_local(post: dict, reader: LocalReader) -> Acquired:
    if post.get("member") is None:
        return Acquired(None, error=f"not in the {reader.kind} source")
    source = reader.describe(post)
    try:
        return Acquired(source, reader.read(post), original=bool(post["original"]))
    except (OSError, ValueError) as exc:
        return Acquired(source, error=f"cannot read: {_local_reason(exc, post, reader)}")


def _local_reason(exc: OSError | ValueError, post: dict, reader: LocalReader) -> str:
    """A stable text for a local file that could not be read: the reader's messages name
    the file and its sizes, which the ledger's `source` already holds."""
    if isinstance(exc, FileNotFoundError):
        return f"the file is gone from the {reader.kind} source"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if post["size"] > reader.max_bytes:
        return f"file over fetch.max_bytes ({reader.max_bytes})"
    return "the file changed since it was indexed"


def _process(post: dict, cfg: DownloadConfig, acquire: Callable[[dict], Acquired],
             buckets: list[Bucket], out_dir: Path) -> dict:  # fmt: skip
    row: dict[str, Any] = dict.fromkeys(LEDGER_SCHEMA)
    got = acquire(post)
    row["id"], row["source"] = post["id"], got.source
    if got.error is not None:
        return {**row, "status": "failed", "error": got.error}
    row["bytes"] = len(got.data)
    try:
        stored = _store(got, post, cfg, buckets, out_dir)
        return {**row, **stored, "status": "ok"}
    except ImageRejected as exc:
        return {**row, "status": "failed", "error": str(exc)}


def _store(got: Acquired, post: dict, cfg: DownloadConfig, buckets: list[Bucket],
           out_dir: Path) -> dict:  # fmt: skip
    """Verify, resize, encode and write one image; returns its ledger fields."""
    checked = _check_md5(got, post, cfg)
    fitted = fit_encoded(got.data, lambda w, h: place(w, h, cfg.buckets, buckets), _options(cfg))
    p, encoded = fitted.placement, fitted.data
    rel = image_path(post["id"], cfg)
    if cfg.sidecars:
        atomic_write_bytes(out_dir / caption_path(post["id"], cfg),
                      (post.get("caption") or "").encode("utf-8"))  # fmt: skip
    atomic_write_bytes(out_dir / rel, encoded)
    return {
        "path": str(rel), "md5_checked": checked, "orig_w": p.original[0],
        "orig_h": p.original[1], "bucket_w": p.bucket.width, "bucket_h": p.bucket.height,
        "resized_w": p.resized[0], "resized_h": p.resized[1], "crop_left": p.crop_left,
        "crop_top": p.crop_top,
    }  # fmt: skip


def _options(cfg: DownloadConfig) -> Options:
    return Options(library=cfg.resize_library, max_pixels=cfg.max_pixels,
                   background=cfg.background, jpeg_draft=cfg.jpeg_draft,
                   image_format=cfg.image_format, quality=cfg.quality)  # fmt: skip


def _check_md5(got: Acquired, post: dict, cfg: DownloadConfig) -> bool:
    expected = (post.get("md5") or "").lower()
    if not (cfg.verify_md5 and expected and got.original):
        return False
    actual = hashlib.md5(got.data).hexdigest()
    if actual != expected:
        # the digests differ per post: the reason is one text (the ledger keeps the id)
        raise ImageRejected("md5 differs from metadata (the file is not the one listed)")
    return True
