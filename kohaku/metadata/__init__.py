"""Danbooru metadata: every source opened as the same DuckDB views (`source`: the
danbooru2023 SQLite file, parquet exports, `/posts.json` pages, a store snapshot), the
metadata store (danbooru metadata imported once into content-hashed parquet partitions,
immutable snapshots of them: `store`, `snapshot`), its daily sync from the danbooru API
(`config`, `sync`, `merge`, `prune`) and a parquet export (`export`).

The sample stage reads its source through the exports below; they import DuckDB only (the
sync's HTTP client is not loaded by them).
"""

from kohaku.metadata.source import Source, connect, detect_format, materialize_posts, open_source

__all__ = ["Source", "connect", "detect_format", "materialize_posts", "open_source"]
