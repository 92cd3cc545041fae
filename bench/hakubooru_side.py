"""The HakuBooru half of bench/hakubooru_compare.py: select posts and caption them with
HakuBooru 0.0.3 itself. Runs inside bench/.venv-hakubooru (bench/setup_hakubooru.sh);
imports hakubooru, never kohaku.

    bench/.venv-hakubooru/bin/python bench/hakubooru_side.py --db bench/out/synth-200000-s0.db \
        --out bench/out/hb/captions.jsonl --ranges '[{"start": 0, "end": null, "count": "all"}]'

Reads the danbooru2023 SQLite file through `hakubooru.dataset.load_db` (peewee).
Selection follows HakuBooru's README: `Post.select().where(...)` per id range
[start, end) with not deleted, not banned, md5 not null and file_ext in the still-image
set, then `random.Random(seed).sample(posts, count)` unless count is "all" (one Random,
ranges in order). Captions: `KohakuCaptioner().caption(post, None)` with its default
processors (year_tag, rating_tag, quality_tag_new), one post after another; like
HakuBooru's Exporter the post's tag cache is dropped after captioning.
Writes `--out` (JSON lines {"id", "caption"}, by id), `fav_count_percentile_full.json`
next to it (HakuBooru's fav_count threshold table) and prints one JSON line of timings
{select_s, caption_s, posts, fav_table} as the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from hakubooru.caption import KohakuCaptioner
from hakubooru.dataset import Post, load_db
from hakubooru.metainfo import fav_count_percentile_full

IMAGE_EXTS = ["jpg", "jpeg", "png", "webp", "avif"]
ALL = '[{"start": 0, "end": null, "count": "all"}]'


def select_range(start: int, end: int | None) -> list:
    """Posts of [start, end) passing HakuBooru-style filters, as peewee Post objects."""
    conds = [
        Post.id >= start,
        Post.is_deleted == False,  # noqa: E712 (peewee expressions)
        Post.is_banned == False,  # noqa: E712
        Post.md5.is_null(False),
        Post.file_ext << IMAGE_EXTS,
    ]
    if end is not None:
        conds.append(Post.id < end)
    return list(Post.select().where(*conds))


def select_posts(ranges: list[dict], seed: int) -> list:
    rng = random.Random(seed)
    chosen = []
    for r in ranges:
        posts = select_range(int(r.get("start", 0)), r.get("end"))
        count = r.get("count", "all")
        if count != "all":
            posts = rng.sample(posts, min(int(count), len(posts)))
        chosen += posts
    return chosen


def caption_posts(posts: list) -> list[tuple[int, str]]:
    captioner = KohakuCaptioner()
    out = []
    for post in posts:
        out.append((post.id, captioner.caption(post, None)))
        if "_tags_cache" in post.__dict__:  # as Exporter.process_data: free the Tag objects
            del post._tags_cache
    return out


def write_outputs(out: Path, rows: list[tuple[int, str]]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for pid, caption in sorted(rows):
            fh.write(json.dumps({"id": pid, "caption": caption}, ensure_ascii=False) + "\n")
    table = out.parent / "fav_count_percentile_full.json"
    table.write_text(json.dumps(fav_count_percentile_full, indent=1))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ranges", default=ALL, help="JSON list of {start, end, count}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.db.is_file():  # load_db would create an empty database
        sys.exit(f"{args.db} does not exist")
    load_db(str(args.db))
    t0 = time.perf_counter()
    posts = select_posts(json.loads(args.ranges), args.seed)
    t1 = time.perf_counter()
    rows = caption_posts(posts)
    t2 = time.perf_counter()
    table = write_outputs(args.out, rows)
    print(json.dumps({"select_s": round(t1 - t0, 3), "caption_s": round(t2 - t1, 3),
                      "posts": len(rows), "fav_table": str(table)}))  # fmt: skip


if __name__ == "__main__":
    main()
