"""Merge fetched /posts.json pages into a snapshot: rewrite only the partitions they change.

Reads: the journal's pages (danbooru's JSON; missing keys read as NULL) and the parent
snapshot's partition files. Writes: new partition files for the changed id ranges (post,
posttagrelation, tag) and returns the new `Snapshot` (not yet published).
Rules: a fetched post replaces the stored row; its tag rows are replaced only when its tag
set changed (ord = category * 100000 + position in the tag string, as the /posts.json
source numbers them); unknown tag names get ids after the highest, in name order; a tag
shown in another category takes it; a known post inside the re-fetched window that the API
no longer lists is marked deleted (when `absent_as_deleted`).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from kohaku.errors import ConfigError
from kohaku.metadata.config import SyncConfig
from kohaku.metadata.snapshot import PartFile, Snapshot, read_info
from kohaku.metadata.source import API_CATEGORIES, connect
from kohaku.metadata.store import new_snapshot, write_part

API_COLUMNS = {
    "id": "BIGINT", "created_at": "VARCHAR", "updated_at": "VARCHAR", "md5": "VARCHAR",
    "is_deleted": "BOOLEAN", "is_banned": "BOOLEAN", "image_width": "BIGINT",
    "image_height": "BIGINT", "file_size": "BIGINT", "file_ext": "VARCHAR", "rating": "VARCHAR",
    "score": "BIGINT", "fav_count": "BIGINT", "file_url": "VARCHAR",
    **{f"tag_string_{c}": "VARCHAR" for c in API_CATEGORIES},
}  # fmt: skip
POST_FIELDS = ("id", "created_at", "md5", "is_deleted", "is_banned", "image_width",
               "image_height", "file_size", "file_ext", "rating", "score", "fav_count",
               "file_url")  # fmt: skip


def merge_pages(
    store: Path, parent: Snapshot, pages: list[Path], after: int, max_known: int, cfg: SyncConfig
) -> Snapshot:
    """The snapshot that results from `pages` (fetched above `after`) over `parent`."""
    info = read_info(store)
    con = connect(threads=cfg.threads, memory_limit=cfg.memory_limit)
    try:
        _load_pages(con, pages)
    except duckdb.Error as exc:  # a field of an unexpected type, say
        where = pages[0].parent.parent if pages else store
        raise ConfigError(f"the fetched pages cannot be read ({str(exc).splitlines()[0]}); "
                          f"remove {where} to fetch them again") from None  # fmt: skip
    tags, new_tags = _merge_tags(con, store, parent, info.tag_partition_ids)
    _absent(con, store, parent, after, max_known, cfg.absent_as_deleted)
    posts, rels, counts = _merge_posts(con, store, parent, info.partition_ids)
    max_id = con.execute("SELECT max(id) FROM f_post").fetchone()[0] or 0
    tables = {"post": posts, "tag": tags, "posttagrelation": rels}
    counts.update(pages=len(pages), new_tags=new_tags, rewritten={
        t: len({p.file for p in tables[t]} - {p.file for p in parent.tables[t]}) for t in tables
    })  # fmt: skip
    return new_snapshot(tables, parent.id, max(parent.max_post_id, max_id), {"sync": counts})


def _load_pages(con: duckdb.DuckDBPyConnection, pages: list[Path]) -> None:
    columns = ", ".join(f"{c}::{t} AS {c}" for c, t in API_COLUMNS.items())
    if pages:
        spec = "{" + ", ".join(f"'{c}': '{t}'" for c, t in API_COLUMNS.items()) + "}"
        source = (f"read_json({[str(p) for p in pages]!r}, format='array', columns={spec}, "
                  "filename=true, maximum_object_size=67108864)")  # fmt: skip
    else:
        source = "(SELECT NULL AS filename, " + ", ".join(f"NULL AS {c}" for c in API_COLUMNS) \
            + " WHERE false)"  # fmt: skip
    # a post on two pages (it cannot be with id cursors, but be safe): the newest copy wins
    con.execute(f"""CREATE TEMP TABLE api AS SELECT {columns} FROM {source}
        QUALIFY row_number() OVER (PARTITION BY id
                                   ORDER BY updated_at DESC NULLS LAST, filename DESC) = 1""")
    con.execute("""CREATE TEMP TABLE f_post AS SELECT id, created_at, md5,
        is_deleted::INT AS is_deleted, is_banned::INT AS is_banned, image_width, image_height,
        file_size, lower(file_ext) AS file_ext,
        CASE rating WHEN 'g' THEN 0 WHEN 's' THEN 1 WHEN 'q' THEN 2 WHEN 'e' THEN 3 END AS rating,
        score, fav_count, file_url FROM api""")
    unions = " UNION ALL ".join(
        f"SELECT id AS post_id, {num} AS category, unnest(t) AS name, "
        f"generate_subscripts(t, 1) AS pos FROM (SELECT id, "
        f"string_split(coalesce(tag_string_{name}, ''), ' ') AS t FROM api)"
        for name, num in API_CATEGORIES.items()
    )
    con.execute(f"""CREATE TEMP TABLE f_rel_named AS SELECT post_id, category, name,
        category * 100000 + pos AS ord FROM ({unions}) WHERE name <> ''""")


def _files(parent: Snapshot, store: Path, table: str) -> str:
    return repr([str(p) for p in parent.files(store, table)])


def _old(parent: Snapshot, store: Path, table: str, lo: int) -> str:
    """The parent's rows of one partition (an empty relation of the right type if none)."""
    part = next((p for p in parent.tables[table] if p.lo == lo), None)
    if part is not None:
        return f"(SELECT * FROM read_parquet('{store / part.file}'))"
    return f"(SELECT * FROM read_parquet('{store / parent.tables[table][0].file}') LIMIT 0)"


def _merge_tags(
    con: duckdb.DuckDBPyConnection, store: Path, parent: Snapshot, width: int
) -> tuple[list[PartFile], int]:
    con.execute(
        f"CREATE TEMP TABLE old_tag AS SELECT * FROM read_parquet({_files(parent, store, 'tag')})"
    )
    con.execute("""CREATE TEMP TABLE f_tag AS SELECT name, min(category) AS type
        FROM f_rel_named GROUP BY name""")
    con.execute("""CREATE TEMP TABLE tag_delta AS
        SELECT (SELECT coalesce(max(id), 0) FROM old_tag) + row_number() OVER (ORDER BY f.name)
               AS id, f.name, f.type FROM f_tag f ANTI JOIN old_tag o USING (name)""")
    new_tags = con.execute("SELECT count(*) FROM tag_delta").fetchone()[0]
    con.execute("""INSERT INTO tag_delta SELECT o.id, o.name, f.type FROM old_tag o
        JOIN f_tag f USING (name) WHERE o.type IS DISTINCT FROM f.type""")
    con.execute("""CREATE TEMP TABLE f_rel AS SELECT r.post_id, t.id AS tag_id, r.ord AS id
        FROM f_rel_named r JOIN (SELECT id, name FROM old_tag UNION
                                 SELECT id, name FROM tag_delta) t USING (name)""")
    los = con.execute(f"SELECT DISTINCT id // {width} * {width} FROM tag_delta").fetchall()
    parts = {p.lo: p for p in parent.tables["tag"]}
    for (lo,) in los:
        query = f"""SELECT * FROM {_old(parent, store, "tag", lo)}
            WHERE id NOT IN (SELECT id FROM tag_delta) UNION ALL BY NAME
            SELECT * FROM tag_delta WHERE id >= {lo} AND id < {lo + width}"""
        parts[lo] = write_part(con, store, "tag", lo, query)
    return [p for p in parts.values() if p is not None], new_tags


def _absent(con, store: Path, parent: Snapshot, after: int, max_known: int, mark: bool) -> None:
    """Known, undeleted posts in (after, max_known] that the API did not list."""
    con.execute(f"""CREATE TEMP TABLE absent AS SELECT id FROM
        read_parquet({_files(parent, store, "post")}) WHERE {mark} AND id > {after}
        AND id <= {max_known} AND is_deleted = 0 AND id NOT IN (SELECT id FROM f_post)""")


def _merge_posts(
    con: duckdb.DuckDBPyConnection, store: Path, parent: Snapshot, width: int
) -> tuple[list[PartFile], list[PartFile], dict]:
    los = con.execute(f"""SELECT DISTINCT id // {width} * {width} AS lo FROM
        (SELECT id FROM f_post UNION ALL SELECT id FROM absent) ORDER BY lo""").fetchall()
    posts = {p.lo: p for p in parent.tables["post"]}
    rels = {p.lo: p for p in parent.tables["posttagrelation"]}
    counts = _counts(con, parent.max_post_id)
    for (lo,) in los:
        old_post = _old(parent, store, "post", lo)
        counts["changed_posts"] += _changed(con, old_post)
        posts[lo] = write_part(con, store, "post", lo, _post_query(old_post, lo, width))
        counts["retagged_posts"] += _retagged(con, _old(parent, store, "posttagrelation", lo),
                                              lo, width, parent.max_post_id)  # fmt: skip
        rels[lo] = write_part(con, store, "posttagrelation", lo, _rel_query(parent, store, lo))
    keep = lambda d: [p for p in d.values() if p is not None]  # noqa: E731
    return keep(posts), keep(rels), counts


def _counts(con: duckdb.DuckDBPyConnection, max_known: int) -> dict:
    def one(sql: str) -> int:
        return con.execute(sql).fetchone()[0]

    return {"fetched": one("SELECT count(*) FROM f_post"),
            "new_posts": one(f"SELECT count(*) FROM f_post WHERE id > {max_known}"),
            "changed_posts": 0, "retagged_posts": 0,
            "marked_deleted": one("SELECT count(*) FROM absent")}  # fmt: skip


def _post_query(old: str, lo: int, width: int) -> str:
    return f"""SELECT * REPLACE (CASE WHEN id IN (SELECT id FROM absent) THEN 1
        ELSE is_deleted END AS is_deleted) FROM {old} WHERE id NOT IN (SELECT id FROM f_post)
        UNION ALL BY NAME SELECT * FROM f_post WHERE id >= {lo} AND id < {lo + width}"""


def _changed(con: duckdb.DuckDBPyConnection, old: str) -> int:
    """Known posts whose fetched row differs from the stored one."""
    differs = " OR ".join(f"f.{c} IS DISTINCT FROM o.{c}" for c in POST_FIELDS[1:])
    return con.execute(f"SELECT count(*) FROM f_post f JOIN {old} o USING (id) WHERE {differs}"
                       ).fetchone()[0]  # fmt: skip


def _retagged(
    con: duckdb.DuckDBPyConnection, old_rel: str, lo: int, width: int, max_known: int
) -> int:
    """Fetched posts of [lo, lo + width) whose tag set differs (new posts included): their
    rows are replaced. Returns how many of them were known before."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE retag AS
        WITH o AS (SELECT post_id, list_sort(list(tag_id)) AS s FROM {old_rel} GROUP BY post_id),
             n AS (SELECT post_id, list_sort(list(tag_id)) AS s FROM f_rel
                   WHERE post_id >= {lo} AND post_id < {lo + width} GROUP BY post_id)
        SELECT p.id FROM f_post p LEFT JOIN o ON o.post_id = p.id LEFT JOIN n ON n.post_id = p.id
        WHERE p.id >= {lo} AND p.id < {lo + width} AND o.s IS DISTINCT FROM n.s""")
    return con.execute(f"SELECT count(*) FROM retag WHERE id <= {max_known}").fetchone()[0]


def _rel_query(parent: Snapshot, store: Path, lo: int) -> str:
    old = _old(parent, store, "posttagrelation", lo)
    return f"""SELECT * FROM {old} WHERE post_id NOT IN (SELECT id FROM retag)
        UNION ALL BY NAME SELECT * FROM f_rel WHERE post_id IN (SELECT id FROM retag)"""
