"""danbooru ``/posts.json`` pages from a danbooru2023 SQLite database (synthetic or real).

Reads the database read-only, page by page; writes ``out_dir/posts-NNNNN.json`` atomically,
newest post first, with danbooru's keys, ``rating`` as g/s/q/e and alphabetical tag strings
per category (what the API serves, for the sample stage's JSON input and a fake API).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from kohaku.demo.synth import (
    API_KEYS,
    BOOL_COLUMNS,
    CATEGORY_NAMES,
    POST_COLUMNS,
    RATING_LETTERS,
)
from kohaku.stage import atomic_path

log = logging.getLogger(__name__)


def _page_tags(con: sqlite3.Connection, lo: int, hi: int) -> dict[int, dict[str, list[str]]]:
    """Tag names by post id and category for posts with ids in [lo, hi], alphabetical."""
    rows = con.execute(
        "SELECT r.post_id, t.type, t.name FROM posttagrelation r JOIN tag t ON t.id = r.tag_id"
        " WHERE r.post_id BETWEEN ? AND ? ORDER BY r.post_id, t.type, t.name", (lo, hi)
    )  # fmt: skip
    out: dict[int, dict[str, list[str]]] = {}
    for post_id, kind, name in rows:
        cats = out.setdefault(post_id, {c: [] for c in CATEGORY_NAMES})
        cats[CATEGORY_NAMES[kind] if 0 <= kind < 5 else "general"].append(name)
    return out


def _api_post(row: dict, cats: dict[str, list[str]]) -> dict:
    """One danbooru ``/posts.json`` object from a ``post`` row and its tags by category."""
    cats = cats or {c: [] for c in CATEGORY_NAMES}
    every = sorted(name for names in cats.values() for name in names)
    derived = {"rating": RATING_LETTERS[row["rating"]], "tag_string": " ".join(every),
               "tag_count": len(every)}  # fmt: skip
    for cat, names in cats.items():
        derived[f"tag_string_{cat}"], derived[f"tag_count_{cat}"] = " ".join(names), len(names)
    for key in BOOL_COLUMNS:
        derived[key] = bool(row[key])
    return {key: derived[key] if key in derived else row[key] for key in API_KEYS}


def _write_json(path: Path, obj: object) -> Path:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def write_api_pages(db_path: Path, out_dir: Path, page_size: int = 200) -> list[Path]:
    """Write the posts of a danbooru2023 SQLite DB as ``/posts.json`` pages, newest id first.

    Page i (``out_dir/posts-0000i.json``) holds ``page_size`` post objects with danbooru's keys,
    ``rating`` as g/s/q/e, JSON booleans and space-separated alphabetical tag strings per
    category. Reads the DB page by page (read-only), so it also works on the real 7M-post file.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    db_path, out_dir = Path(db_path), Path(out_dir)
    if not db_path.is_file():
        raise FileNotFoundError(f"no SQLite database at {db_path}")
    out_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)
    pages: list[Path] = []
    try:
        cur = con.execute(f"SELECT {', '.join(POST_COLUMNS)} FROM post ORDER BY id DESC")
        while rows := cur.fetchmany(page_size):
            tags = _page_tags(con, rows[-1][0], rows[0][0])
            posts = [
                _api_post(dict(zip(POST_COLUMNS, r, strict=True)), tags.get(r[0])) for r in rows
            ]
            pages.append(_write_json(out_dir / f"posts-{len(pages):05d}.json", posts))
    finally:
        con.close()
    log.info("wrote %d pages of %s posts from %s to %s", len(pages), page_size, db_path, out_dir)
    return pages
