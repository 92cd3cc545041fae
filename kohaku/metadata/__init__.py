"""The metadata store: danbooru metadata imported once into content-hashed parquet
partitions, immutable snapshots of them, and a sync from the danbooru API that makes new
snapshots (`snapshot`, `store`, `sync`). Kept import-light: `kohaku.sample.source` reads
snapshots through `kohaku.metadata.snapshot` alone."""
