"""Independent reference for the sample stage: the danbooru2023 rows read with the stdlib
sqlite3 module, filters and the seeded selection recomputed with NumPy (only the key
function `sample_key` comes from kohaku), and small hand-made metadata folders."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from kohaku.sample.config import IdRange, SampleConfig
from kohaku.sample.keys import sample_key

# danbooru2023 `post.rating` numbering (shared/danbooru_schema.md)
RATING_NUMBER = {"general": 0, "sensitive": 1, "questionable": 2, "explicit": 3}
ALL_EXTS = ["jpg", "jpeg", "png", "webp", "avif", "gif", "mp4", "webm", "zip", "swf"]
NO_FILTERS = {
    "drop_deleted": False,
    "drop_banned": False,
    "drop_restricted": False,
    "image_exts": ALL_EXTS,
}
POST_FIELDS = (
    "id",
    "created_at",
    "md5",
    "is_deleted",
    "is_banned",
    "image_width",
    "image_height",
    "file_size",
    "file_ext",
    "rating",
    "score",
    "fav_count",
    "file_url",
)


@dataclass(frozen=True)
class Metadata:
    """The rows of a danbooru2023 database, post columns as arrays in id order."""

    posts: dict[str, np.ndarray]
    tag_ids: dict[str, int]
    tags: dict[int, tuple[str, int]]  # tag id -> (name, type)
    tags_of: dict[int, set[int]]  # post id -> tag ids
    relations: list[tuple[int, int, int]]  # (id, post_id, tag_id)

    @property
    def ids(self) -> np.ndarray:
        return self.posts["id"]


def read_metadata(db: Path) -> Metadata:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(f"SELECT {', '.join(POST_FIELDS)} FROM post ORDER BY id").fetchall()
        tags = con.execute("SELECT id, name, type FROM tag").fetchall()
        rels = con.execute("SELECT id, post_id, tag_id FROM posttagrelation").fetchall()
    finally:
        con.close()
    cols = list(zip(*rows, strict=True))
    posts = {}
    for name, values in zip(POST_FIELDS, cols, strict=True):
        posts[name] = np.array(values, dtype=object if name in _TEXT else np.int64)
    tags_of: dict[int, set[int]] = {int(i): set() for i in posts["id"]}
    for _, post_id, tag_id in rels:
        tags_of.setdefault(post_id, set()).add(tag_id)
    return Metadata(
        posts=posts,
        tag_ids={name: tid for tid, name, _ in tags},
        tags={tid: (name, kind) for tid, name, kind in tags},
        tags_of=tags_of,
        relations=rels,
    )


_TEXT = {"created_at", "md5", "file_ext", "file_url"}


def reject_flags(meta: Metadata, cfg: SampleConfig) -> dict[str, np.ndarray]:
    """Per active filter, a boolean array over posts: True = rejected."""
    f, p = cfg.filters, meta.posts
    empty = lambda col: np.array([not v for v in p[col]])  # noqa: E731  (None or "")
    width, height = p["image_width"].astype(float), p["image_height"].astype(float)
    pixels = p["image_width"] * p["image_height"]
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(height > 0, width / height, np.nan)
    flags: dict[str, np.ndarray] = {}
    if f.drop_deleted:
        flags["deleted"] = p["is_deleted"] != 0
    if f.drop_banned:
        flags["banned"] = p["is_banned"] != 0
    if f.drop_restricted:
        flags["restricted"] = empty("md5") | empty("file_url")
    exts = {e.lower() for e in f.image_exts}
    flags["file_ext"] = np.array([(e or "").lower() not in exts for e in p["file_ext"]])
    if set(f.ratings) != set(RATING_NUMBER):
        flags["rating"] = ~np.isin(p["rating"], [RATING_NUMBER[r] for r in f.ratings])
    if f.min_pixels is not None:
        flags["min_pixels"] = pixels < f.min_pixels
    if f.max_pixels is not None:
        flags["max_pixels"] = pixels > f.max_pixels
    if f.min_aspect is not None:
        flags["min_aspect"] = ~(aspect >= f.min_aspect)
    if f.max_aspect is not None:
        flags["max_aspect"] = ~(aspect <= f.max_aspect)
    if f.min_score is not None:
        flags["min_score"] = p["score"] < f.min_score
    if f.required_tags:
        need = {meta.tag_ids[n] for n in f.required_tags}
        flags["required_tags"] = np.array([not need <= meta.tags_of[i] for i in meta.ids])
    if f.excluded_tags:
        bad = {meta.tag_ids[n] for n in f.excluded_tags}
        flags["excluded_tags"] = np.array([bool(bad & meta.tags_of[i]) for i in meta.ids])
    return flags


@dataclass(frozen=True)
class RangeResult:
    chosen: list[int]
    in_range: int
    eligible: int
    rejected_by: dict[str, int]


def range_seed(seed: int, r: IdRange) -> int:
    """Plain ranges draw by the seed; a subset by the seed and its name (documented as
    the first 63 bits of sha256("<seed>:<name>"))."""
    if not r.tagged:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{r.name}".encode()).digest()[:8], "big") >> 1


def query_match(meta: Metadata, r: IdRange) -> np.ndarray:
    """Per post: does it match the range's tag query (all required, one of any, no excluded)."""
    if not r.tagged:
        return np.ones(len(meta.ids), dtype=bool)
    need = {meta.tag_ids[n] for n in r.required_tags or ()}
    some = {meta.tag_ids[n] for n in r.any_tags or ()}
    bad = {meta.tag_ids[n] for n in r.excluded_tags or ()}
    return np.array([
        need <= meta.tags_of[i] and (not some or bool(some & meta.tags_of[i]))
        and not bad & meta.tags_of[i] for i in meta.ids
    ])  # fmt: skip


def expected_selection(meta: Metadata, cfg: SampleConfig) -> list[RangeResult]:
    """Per range: the `count` eligible posts with the smallest keys (before_sampling), or
    the `count` smallest-key posts of the range that pass the filters (after_sampling)."""
    ids = meta.ids
    flags = reject_flags(meta, cfg)
    rejected = np.zeros(len(ids), dtype=bool)
    for flag in flags.values():
        rejected |= flag
    out = []
    for r in cfg.ranges:
        keys = sample_key(ids, range_seed(cfg.seed, r))
        stop = 2**32 if r.end is None else r.end
        members = np.flatnonzero((ids >= r.start) & (ids < stop) & query_match(meta, r))
        ordered = members[np.lexsort((ids[members], keys[members]))]
        if cfg.filter_timing == "before_sampling":
            scope = ordered
            pool = ordered[~rejected[ordered]]
            chosen = pool if r.count == "all" else pool[: r.count]
        else:
            scope = ordered if r.count == "all" else ordered[: r.count]
            chosen = scope[~rejected[scope]]
        out.append(
            RangeResult(
                chosen=sorted(int(i) for i in ids[chosen]),
                in_range=len(members),
                eligible=int((~rejected[scope]).sum()),
                rejected_by={name: int(flag[scope].sum()) for name, flag in flags.items()},
            )
        )
    return out


def written_under(cfg: SampleConfig, results: list[RangeResult]) -> dict[int, int]:
    """Post id -> index of the range it is written under: of the ranges that drew it, the
    one with the largest repeats, the first listed among equals."""
    out: dict[int, int] = {}
    for i, res in enumerate(results):
        for post in res.chosen:
            j = out.get(post)
            if j is None or cfg.ranges[i].repeats > cfg.ranges[j].repeats:
                out[post] = i
    return out


def chosen_by_range(posts: pl.DataFrame, n_ranges: int) -> list[list[int]]:
    """posts.parquet ids grouped by range_idx."""
    return [posts.filter(pl.col("range_idx") == i)["id"].sort().to_list() for i in range(n_ranges)]


# --- hand-made metadata folders (parquet, the three danbooru2023 tables) ---------------

POST_DEFAULTS = {
    "created_at": "2020-06-01T12:00:00.000-04:00",
    "md5": "0123456789abcdef0123456789abcdef",
    "is_deleted": 0,
    "is_banned": 0,
    "image_width": 1000,
    "image_height": 1000,
    "file_size": 100_000,
    "file_ext": "jpg",
    "rating": 0,
    "score": 10,
    "fav_count": 5,
    "file_url": "https://cdn.donmai.us/original/00/11/x.jpg",
}
POST_SCHEMA = {
    "id": pl.Int64,
    "created_at": pl.String,
    "md5": pl.String,
    "is_deleted": pl.Int64,
    "is_banned": pl.Int64,
    "image_width": pl.Int64,
    "image_height": pl.Int64,
    "file_size": pl.Int64,
    "file_ext": pl.String,
    "rating": pl.Int64,
    "score": pl.Int64,
    "fav_count": pl.Int64,
    "file_url": pl.String,
}


def write_metadata(
    folder: Path,
    posts: list[dict],
    tags: list[tuple[int, str, int]] = (),
    relations: list[tuple[int, int]] = (),
) -> Path:
    """Write post.parquet, tag.parquet and posttagrelation.parquet; posts are dicts of
    overrides of POST_DEFAULTS (with an `id`), relations (post_id, tag_id) get ids 1, 2..."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{**POST_DEFAULTS, **p} for p in posts]
    pl.DataFrame(rows, schema=POST_SCHEMA).write_parquet(folder / "post.parquet")
    tag_rows = [{"id": i, "name": n, "type": t} for i, n, t in tags]
    pl.DataFrame(
        tag_rows, schema={"id": pl.Int64, "name": pl.String, "type": pl.Int64}
    ).write_parquet(folder / "tag.parquet")
    rel_rows = [{"id": k + 1, "post_id": p, "tag_id": t} for k, (p, t) in enumerate(relations)]
    pl.DataFrame(
        rel_rows, schema={"id": pl.Int64, "post_id": pl.Int64, "tag_id": pl.Int64}
    ).write_parquet(folder / "posttagrelation.parquet")
    return folder


def export_parquet(db: Path, folder: Path, seed: int, parts: int = 1) -> Path:
    """The three tables of a SQLite DB as parquet with rows shuffled; with parts > 1 each
    table is a folder `<table>/part-N.parquet`."""
    folder.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for k, table in enumerate(("post", "tag", "posttagrelation")):
            cur = con.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cur.description]
            df = pl.DataFrame(cur.fetchall(), schema=names, orient="row", infer_schema_length=None)
            df = df.sample(fraction=1.0, shuffle=True, seed=seed + k)
            if parts == 1:
                df.write_parquet(folder / f"{table}.parquet")
                continue
            (folder / table).mkdir()
            size = -(-df.height // parts)
            for i in range(parts):
                df.slice(i * size, size).write_parquet(folder / table / f"part-{i}.parquet")
    finally:
        con.close()
    return folder
