"""Open danbooru metadata in DuckDB as three normalised views.

Reads: the danbooru2023 SQLite file (through the sqlite scanner shipped in the
`duckdb-ext-sqlite` wheel, loaded from disk: DuckDB's own INSTALL needs the internet),
a folder of parquet exports, or a folder of danbooru `/posts.json` pages.
Writes: nothing; it defines table macros `post()`, `tag()` and `rel()` (post_id, tag_id,
ord) on the connection, with tag categories in the danbooru2023 numbering (0 general, 1 artist,
2 character, 3 copyright, 4 meta) and ratings as 0..3.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import duckdb

from kohaku.errors import InputError
from kohaku.metadata import snapshot as store_snapshot

POST_COLUMNS = (
    "id", "created_at", "md5", "is_deleted", "is_banned", "image_width", "image_height",
    "file_size", "file_ext", "rating", "score", "fav_count", "file_url",
)  # fmt: skip
TABLE_COLUMNS = {
    "post": POST_COLUMNS,
    "tag": ("id", "name", "type"),
    "posttagrelation": ("id", "post_id", "tag_id"),
}
# danbooru API tag_string_* field -> danbooru2023 tag type
API_CATEGORIES = {"general": 0, "artist": 1, "character": 2, "copyright": 3, "meta": 4}
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Source:
    path: Path
    format: str
    snapshot: str | None = None  # the resolved snapshot id of a metadata store


def connect(
    threads: int | None = None, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that never tries to download extensions."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")  # timestamps in manifests read the same everywhere
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    return con


def detect_format(
    source: Path | str, source_format: str = "auto", snapshot: str = "latest"
) -> Source:
    """The source at `source` (`sample.source`, whose fields the messages name): its format,
    given or guessed, and for a metadata store the resolved snapshot id."""
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(
            f"sample.source {path} does not exist: point it at the danbooru2023 "
            "SQLite file, a parquet export folder or a folder of /posts.json pages"
        )
    fmt = source_format
    if fmt == "auto":
        fmt = _guess_format(path)
    if fmt == "store":
        return Source(path, fmt, store_snapshot.resolve_id(path, snapshot))
    if snapshot != "latest":
        raise InputError(f"sample.snapshot {snapshot!r} needs a metadata store as "
                         f"sample.source, not {fmt} ({path})")  # fmt: skip
    return Source(path=path, format=fmt)


def _guess_format(path: Path) -> str:
    if path.is_file():
        with path.open("rb") as f:
            if f.read(16) == SQLITE_MAGIC:
                return "sqlite"
        raise InputError(f"sample.source {path} is a file but not a SQLite database")
    if store_snapshot.is_store(path):
        return "store"
    if any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")):
        return "parquet"
    if any(path.glob("*.json")):
        return "api_json"
    raise InputError(f"sample.source {path} holds no .parquet or .json files")


def open_source(con: duckdb.DuckDBPyConnection, src: Source) -> None:
    """Define the table macros `post()`, `tag()` and `rel()` for `src` and check columns.

    Macros rather than views: DuckDB binds a view when it is created, and binding an
    attached SQLite table runs `SELECT MIN(ROWID), MAX(ROWID)`, a full scan in SQLite
    (about 40 s for the 200M-row relation table)."""
    if src.format == "sqlite":
        _open_sqlite(con, src.path)
    elif src.format == "parquet":
        _open_parquet(con, src.path)
    elif src.format == "store":
        _open_store(con, src)
    else:
        _open_api_json(con, src.path)


def materialize_posts(con: duckdb.DuckDBPyConnection) -> None:
    """Read the post table once: the stage queries it several times (candidates, id
    bound, snapshot time, fav_count histogram), and every read of an attached SQLite
    table costs a bind scan plus a slow row-by-row read."""
    con.execute("CREATE OR REPLACE TEMP TABLE post_all AS SELECT * FROM post()")
    con.execute("CREATE OR REPLACE TEMP MACRO post() AS TABLE SELECT * FROM post_all")


def _sqlite_extension_dir() -> str:
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("reading SQLite needs the `duckdb-ext-sqlite` package: pip install it")
    return str(Path(next(iter(spec.submodule_search_locations))) / "extensions")


def _open_sqlite(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    con.execute("SET extension_directory = ?", [_sqlite_extension_dir()])
    con.execute("LOAD sqlite")
    try:
        con.execute(f"ATTACH '{_quote(path)}' AS src (TYPE sqlite, READ_ONLY)")
    except duckdb.Error as exc:
        raise InputError(f"cannot open {path} as SQLite: {exc}") from exc
    _check_columns(con, path, lambda t: f"src.{t}")
    _define_macros(con, lambda t: f"src.{t}")


def _open_parquet(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    def locate(table: str) -> str:
        single, folder = path / f"{table}.parquet", path / table
        if single.is_file():
            return f"read_parquet('{_quote(single)}')"
        if folder.is_dir() and any(folder.glob("*.parquet")):
            return f"read_parquet('{_quote(folder)}/*.parquet')"
        raise InputError(
            f"parquet source {path} lacks table {table!r}: expected "
            f"{single.name} or {table}/*.parquet"
        )

    sources = {t: locate(t) for t in TABLE_COLUMNS}
    _check_columns(con, path, sources.__getitem__)
    _define_macros(con, sources.__getitem__)


def _open_store(con: duckdb.DuckDBPyConnection, src: Source) -> None:
    """A metadata store snapshot: its partition files, in id order, per table."""
    snap = store_snapshot.read_snapshot(src.path, src.snapshot or "latest")
    sources = {t: f"read_parquet({[str(p) for p in snap.files(src.path, t)]!r})"
               for t in TABLE_COLUMNS}  # fmt: skip
    _define_macros(con, sources.__getitem__)


def _define_macros(con: duckdb.DuckDBPyConnection, table) -> None:
    con.execute(f"""CREATE OR REPLACE TEMP MACRO post() AS TABLE SELECT
        id::BIGINT AS id, created_at::VARCHAR AS created_at, md5, is_deleted::INT AS is_deleted,
        is_banned::INT AS is_banned, image_width::BIGINT AS image_width,
        image_height::BIGINT AS image_height, file_size::BIGINT AS file_size,
        lower(file_ext) AS file_ext, rating::INT AS rating, score::BIGINT AS score,
        fav_count::BIGINT AS fav_count, file_url FROM {table("post")}""")
    con.execute(f"""CREATE OR REPLACE TEMP MACRO tag() AS TABLE SELECT id::BIGINT AS id,
        name::VARCHAR AS name, type::INT AS category FROM {table("tag")}""")
    con.execute(f"""CREATE OR REPLACE TEMP MACRO rel() AS TABLE SELECT post_id::BIGINT AS post_id,
        tag_id::BIGINT AS tag_id, id::BIGINT AS ord FROM {table("posttagrelation")}""")


def _check_columns(con: duckdb.DuckDBPyConnection, path: Path, table) -> None:
    for name, required in TABLE_COLUMNS.items():
        cols = _columns(con, table(name))
        if cols is None:
            raise InputError(
                f"{path}: no readable table {name!r}; is this a danbooru2023 metadata database?"
            )
        missing = [c for c in required if c not in cols]
        if missing:
            raise InputError(f"{path}: table {name!r} lacks columns {missing}")


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> set[str] | None:
    """Column names of a relation, None if it does not exist. Attached SQLite tables are
    looked up in the catalog: binding one (DESCRIBE) makes the scanner count its rows."""
    try:
        if relation.startswith("src."):
            rows = con.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = "
                               "'src' AND table_name = ?", [relation[4:]]).fetchall()  # fmt: skip
            return {r[0] for r in rows} or None
        return {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
    except duckdb.Error:  # e.g. a file forced to `sqlite` that is not a database
        return None


def _open_api_json(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    files = sorted(str(p) for p in path.glob("*.json"))
    wanted = list(POST_COLUMNS) + [f"tag_string_{c}" for c in API_CATEGORIES] + ["updated_at"]
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE api_raw AS
            SELECT * FROM read_json({files!r}, format='array', union_by_name=true,
                                    maximum_object_size=67108864)""")
    except duckdb.Error as exc:
        raise InputError(f"{path}: cannot read the /posts.json pages: {_first_line(exc)}") from exc
    cols = {r[0] for r in con.execute("DESCRIBE api_raw").fetchall()}
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise InputError(f"{path}: the /posts.json pages lack fields {missing}")
    _define_api_views(con)


def _define_api_views(con: duckdb.DuckDBPyConnection) -> None:
    # A post can appear on several pages (re-fetched); keep its newest version.
    con.execute("""CREATE OR REPLACE TEMP TABLE api_post AS SELECT * FROM api_raw
        QUALIFY row_number() OVER (PARTITION BY id ORDER BY updated_at DESC) = 1""")
    con.execute("""CREATE OR REPLACE TEMP MACRO post() AS TABLE SELECT id::BIGINT AS id,
        created_at::VARCHAR AS created_at, md5, is_deleted::INT AS is_deleted,
        is_banned::INT AS is_banned, image_width::BIGINT AS image_width,
        image_height::BIGINT AS image_height, file_size::BIGINT AS file_size,
        lower(file_ext) AS file_ext,
        CASE rating WHEN 'g' THEN 0 WHEN 's' THEN 1 WHEN 'q' THEN 2 WHEN 'e' THEN 3 END AS rating,
        score::BIGINT AS score, fav_count::BIGINT AS fav_count, file_url FROM api_post""")
    unions = " UNION ALL ".join(
        f"SELECT id AS post_id, {num} AS category, unnest(t) AS name, "
        f"generate_subscripts(t, 1) AS pos FROM (SELECT id, "
        f"string_split(coalesce(tag_string_{name}, ''), ' ') AS t FROM api_post)"
        for name, num in API_CATEGORIES.items()
    )
    con.execute(f"""CREATE OR REPLACE TEMP TABLE api_rel AS
        SELECT post_id, category, name, category * 100000 + pos AS ord
        FROM ({unions}) WHERE name <> ''""")
    con.execute("""CREATE OR REPLACE TEMP TABLE api_tag AS
        SELECT dense_rank() OVER (ORDER BY name) AS id, name, any_value(category) AS category
        FROM api_rel GROUP BY name""")
    con.execute("CREATE OR REPLACE TEMP MACRO tag() AS TABLE SELECT * FROM api_tag")
    con.execute("""CREATE OR REPLACE TEMP MACRO rel() AS TABLE
        SELECT r.post_id, t.id AS tag_id, r.ord FROM api_rel r JOIN api_tag t USING (name)""")


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
