"""The download stage: each sampled post's image, from danbooru over HTTP or from a local
folder or tar shards, checked (md5, pixel limit, a readable image), fitted to its
aspect-ratio bucket and stored with a per-shard ledger.

`config` (the `[download]` section), `run` (the stage: reads the sample and tag stages'
outputs, writes `<run>/download/`), `shard` (one shard's worker), `sources` (local
folders and tars), `placement` (the bucket set and where an image lands in it),
`resize` / `resize_vips` (Pillow / libvips) and `reasons` (why an image is rejected).
"""

from kohaku.download.config import BucketConfig, DownloadConfig
from kohaku.download.run import DOWNLOAD_VERSION, STAGE, run_download
from kohaku.download.shard import LEDGER_SCHEMA

__all__ = [
    "BucketConfig",
    "DownloadConfig",
    "DOWNLOAD_VERSION",
    "LEDGER_SCHEMA",
    "STAGE",
    "run_download",
]
