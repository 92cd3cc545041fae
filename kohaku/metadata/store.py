"""Import danbooru metadata into the store once; write content-hashed partition files.

Reads: any source `kohaku.metadata.source` opens (the danbooru2023 SQLite file, a parquet
export folder, a folder of /posts.json pages).
Writes: `<store>/store.json`, `<store>/parts/<table>/<lo>-<sha256:16>.parquet` (post and tag
by id, posttagrelation by post_id, `partition_ids` ids per file, rows sorted, tag categories
in the danbooru2023 numbering: 0 general, 1 artist, 2 character, 3 copyright, 4 meta;
ratings 0..3), the first snapshot and `LATEST` (see `kohaku.metadata.snapshot`).
The source is read once per table into a staging folder inside the store, cut by id
range, and each range is then sorted into its partition file.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from kohaku.errors import ConfigError
from kohaku.metadata.snapshot import (
    PARTITION_KEY,
    PARTS,
    STORE_JSON,
    TABLES,
    PartFile,
    Snapshot,
    StoreInfo,
    content_hash,
    latest_id,
    publish,
    read_info,
)
from kohaku.metadata.source import connect, detect_format, open_source
from kohaku.stage import atomic_write_text, fingerprint, sha256_file, temp_name

log = logging.getLogger(__name__)
DEFAULT_PARTITION_IDS = 100_000  # ~80 post files for danbooru's ~8M ids, ~2.7M tag rows each
DEFAULT_TAG_PARTITION_IDS = 1_000_000  # a few tag files; new tags land in the last
# every partition file has exactly these columns and types (the sample stage's macros read them)
COLUMNS = {
    "post": """id::BIGINT AS id, created_at::VARCHAR AS created_at, md5::VARCHAR AS md5,
        is_deleted::INT AS is_deleted, is_banned::INT AS is_banned,
        image_width::BIGINT AS image_width, image_height::BIGINT AS image_height,
        file_size::BIGINT AS file_size, file_ext::VARCHAR AS file_ext, rating::INT AS rating,
        score::BIGINT AS score, fav_count::BIGINT AS fav_count, file_url::VARCHAR AS file_url""",
    "tag": "id::BIGINT AS id, name::VARCHAR AS name, type::INT AS type",
    "posttagrelation": "id::BIGINT AS id, post_id::BIGINT AS post_id, tag_id::BIGINT AS tag_id",
}
ORDER = {"post": "id", "tag": "id", "posttagrelation": "post_id, id"}
# the source's normalised macros (kohaku.metadata.source) in store naming, sorted
SOURCE_QUERIES = {
    "post": "SELECT * FROM post()",
    "tag": "SELECT id, name, category AS type FROM tag()",
    "posttagrelation": "SELECT ord AS id, post_id, tag_id FROM rel()",
}


def write_part(
    con: duckdb.DuckDBPyConnection, store: Path, table: str, lo: int, query: str
) -> PartFile | None:
    """Write the rows of `query` as one partition file named by its content hash (an
    existing file of the same content is reused); None when there are no rows."""
    folder = Path(store) / PARTS / table
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(folder / f"{lo:010d}.parquet")
    try:
        rows = con.execute(f"""COPY (SELECT {COLUMNS[table]} FROM ({query})
            ORDER BY {ORDER[table]}) TO '{tmp}' (FORMAT parquet)""").fetchone()[0]
        if rows == 0:
            return None
        final = folder / f"{lo:010d}-{sha256_file(tmp)[:16]}.parquet"
        if not final.is_file():
            os.replace(tmp, final)
        return PartFile(file=str(final.relative_to(store)), lo=lo, rows=rows)
    finally:
        tmp.unlink(missing_ok=True)


def new_snapshot(
    tables: dict[str, list[PartFile]], parent: str | None, max_post_id: int, origin: dict
) -> Snapshot:
    """A snapshot of `tables`, id = today's UTC date + content hash."""
    now = datetime.now(UTC)
    ordered = {t: sorted(tables[t], key=lambda p: p.lo) for t in TABLES}
    return Snapshot(
        id=f"{now:%Y%m%d}-{content_hash(ordered)[:12]}", created_at=now.isoformat(),
        parent=parent, tables=ordered, max_post_id=max_post_id,
        posts=sum(p.rows for p in ordered["post"]), origin=origin,
    )  # fmt: skip


def import_metadata(
    source: Path, store: Path, partition_ids: int = DEFAULT_PARTITION_IDS,
    tag_partition_ids: int = DEFAULT_TAG_PARTITION_IDS, threads: int | None = None,
    memory_limit: str | None = None,
) -> Snapshot:  # fmt: skip
    """Import `source` into a new store (or one without snapshots) and publish the first
    snapshot. Refuses a store that already holds one: it is kept current by syncs."""
    store = Path(store)
    if latest_id(store) is not None:
        raise ConfigError(f"metadata store {store} already has snapshots; keep it current with "
                          "`kohaku metadata sync`, or import into a new folder")  # fmt: skip
    info = _init_store(store, StoreInfo(partition_ids=partition_ids,
                                        tag_partition_ids=tag_partition_ids))  # fmt: skip
    src = detect_format(source)
    con = connect(threads=threads, memory_limit=memory_limit)
    open_source(con, src)
    t0 = time.perf_counter()
    staging = store / f".import-{os.getpid()}"
    try:
        tables = _import_tables(con, staging, store, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    max_id = con.execute("SELECT coalesce(max(id), 0) FROM post()").fetchone()[0]
    origin = {"import": {"source": fingerprint(src.path).model_dump(), "format": src.format,
                         "seconds": round(time.perf_counter() - t0, 2)}}  # fmt: skip
    snap = new_snapshot(tables, None, max_id, origin)
    publish(store, snap)
    log.info("imported %s into %s: snapshot %s, %d posts", source, store, snap.id, snap.posts)
    return snap


def _init_store(store: Path, info: StoreInfo) -> StoreInfo:
    if (store / STORE_JSON).is_file():
        old = read_info(store)
        if old != info:
            raise ConfigError(f"{store} was created with {old.model_dump()}; import into a "
                              "new folder or use the same partition widths")  # fmt: skip
        return old
    store.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store / STORE_JSON, info.model_dump_json(indent=1))
    return info


def _import_tables(
    con: duckdb.DuckDBPyConnection, staging: Path, store: Path, info: StoreInfo
) -> dict[str, list[PartFile]]:
    """One pass over each source table writes it cut by id range (DuckDB's PARTITION_BY,
    rows unsorted), then each range is sorted and written as its partition file: no
    global sort of the ~200M relation rows."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tables: dict[str, list[PartFile]] = {}
    for table in TABLES:
        key, width, cut = PARTITION_KEY[table], info.width(table), staging / table
        con.execute(f"""COPY (SELECT *, {key} // {width} * {width} AS lo
            FROM ({SOURCE_QUERIES[table]})) TO '{cut}' (FORMAT parquet, PARTITION_BY (lo))""")
        tables[table] = []
        for folder in sorted(cut.glob("lo=*"), key=lambda p: int(p.name[3:])):
            lo = int(folder.name[3:])
            query = f"SELECT * FROM read_parquet('{folder}/*.parquet', hive_partitioning=false)"
            if part := write_part(con, store, table, lo, query):
                tables[table].append(part)
            shutil.rmtree(folder)
        log.info("import: %s in %d partitions", table, len(tables[table]))
    if not tables["post"]:
        raise ConfigError("the source holds no posts; nothing to import")
    return tables
