"""Assemble a large danbooru2023-schema SQLite file from id-shifted copies of a smaller one.

    python bench/tile_db.py --source bench/out/synth-2000000-s0.db --posts 7000000 \
        --out bench/out/tiled-7000000.db

The project's generator builds every row in memory (7M posts: 21 min, 23 GB peak RSS on
this 2-core, 24 GiB machine); this copies an existing database's posts and tag rows
again and again with their ids shifted past the previous copy (tags shared) until
`--posts` posts exist, in SQLite itself (constant memory, a few minutes). The copies
repeat the source's distributions, md5s included; the source's indexes are not copied
(DuckDB's sqlite scanner reads tables by rowid and does not use them).
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path


def tile(source: Path, out: Path, posts: int) -> dict:
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    con = sqlite3.connect(partial)
    con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")
    con.execute("ATTACH ? AS src", [str(source)])
    tables = con.execute("SELECT name, sql FROM src.sqlite_master WHERE type = 'table'").fetchall()
    for _, sql in tables:
        con.execute(sql)
    con.execute("INSERT INTO tag SELECT * FROM src.tag")
    n_src, max_post = con.execute("SELECT count(*), max(id) FROM src.post").fetchone()
    max_rel = con.execute("SELECT max(id) FROM src.posttagrelation").fetchone()[0]
    post_cols = [r[1] for r in con.execute("PRAGMA src.table_info(post)")]
    shifted = ", ".join("id + :dp" if c == "id" else c for c in post_cols)
    copied, k = 0, 0
    while copied < posts:
        dp, dr = k * (max_post + 1), k * (max_rel + 1)
        # the last copy takes the lowest ids that complete the count
        take = min(n_src, posts - copied)
        top = con.execute("SELECT max(id) FROM (SELECT id FROM src.post ORDER BY id LIMIT ?)",
                          [take]).fetchone()[0]  # fmt: skip
        con.execute(f"INSERT INTO post SELECT {shifted} FROM src.post WHERE id <= :top",
                    {"dp": dp, "top": top})  # fmt: skip
        con.execute("INSERT INTO posttagrelation SELECT id + :dr, post_id + :dp, tag_id "
                    "FROM src.posttagrelation WHERE post_id <= :top",
                    {"dr": dr, "dp": dp, "top": top})  # fmt: skip
        con.commit()
        copied += take
        k += 1
    rows = con.execute("SELECT count(*) FROM posttagrelation").fetchone()[0]
    con.close()
    partial.replace(out)
    return {"posts": copied, "relations": rows, "copies": k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--posts", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    summary = tile(args.source, args.out, args.posts)
    print({**summary, "seconds": round(time.perf_counter() - t0, 1), "out": str(args.out)})


if __name__ == "__main__":
    main()
