"""Benchmark: metadata store import, and an incremental sync from the fake danbooru API.

    python bench/bench_metadata.py import --posts 1000000
    python bench/bench_metadata.py sync --posts 1000000 --new 10000 --rate 10

import: generates (or reuses) `bench/out/synth-<posts>-s0.db`, imports it into a fresh
`bench/out/store-<posts>/` in a child process (2 DuckDB threads) and prints that process's
wall time and peak RSS.
sync: the fake danbooru server (`tests/metadata/fake_danbooru.py`, real /posts.json format) on
127.0.0.1 serves `--new` posts above the imported store's highest id (a synthetic DB's posts
with shifted ids) with a rate limit of `--rate` requests/s (a token bucket of `--burst`,
429 + Retry-After: 1 beyond it); the client is configured to the same rate. A hard-linked
copy of the store is synced (window 0: new posts only; or `--window` ids below the newest
re-fetched too, served from the DB with 1% of fav_counts changed). Prints wall time, the
rate's floor (requests / rate) and the overhead beyond it, split into fetching and merging.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dataset import OUT, ensure_db  # noqa: E402

from kohaku.demo.api_pages import _api_post, _page_tags, write_api_pages  # noqa: E402
from kohaku.demo.synth import POST_COLUMNS, generate_danbooru_db  # noqa: E402
from kohaku.fetch import FetchConfig  # noqa: E402
from kohaku.metadata import snapshot  # noqa: E402
from kohaku.metadata.config import SyncConfig  # noqa: E402
from kohaku.metadata.store import import_metadata  # noqa: E402
from kohaku.metadata.sync import sync_metadata  # noqa: E402
from tests.metadata.fake_danbooru import FakeDanbooru  # noqa: E402


def child_import(db: Path, store: Path) -> None:
    """Runs in the child process: the import alone, so its peak RSS is the import's."""
    t0 = time.perf_counter()
    snap = import_metadata(db, store, threads=2)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "snapshot": snap.id,
                      "posts": snap.posts, "files": {t: len(v) for t, v in snap.tables.items()},
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 2**20, 2)}))  # fmt: skip


def bench_import(posts: int, db: Path | None = None) -> Path:
    db, store = db or ensure_db(posts, 0), OUT / f"store-{posts}"
    shutil.rmtree(store, ignore_errors=True)
    cmd = [sys.executable, __file__, "_import", str(db), str(store)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    print(f"import {posts:,} posts ({db.stat().st_size / 2**30:.2f} GiB SQLite): "
          f"{result['seconds']} s in the child ({time.perf_counter() - t0:.1f} s wall with "
          f"start-up), peak RSS {result['peak_rss_gb']} GiB, store {size / 2**30:.2f} GiB, "
          f"files {result['files']}")  # fmt: skip
    return store


def new_posts(n: int, above: int) -> list[dict]:
    """`n` synthetic posts in the API format with ids shifted above `above`."""
    tmp = OUT / f"new-{n}"
    shutil.rmtree(tmp, ignore_errors=True)
    summary = generate_danbooru_db(tmp / "db.sqlite", n, seed=99, max_id=n)
    pages = write_api_pages(summary.path, tmp / "pages")
    posts = [p for f in pages for p in json.loads(f.read_text())]
    shutil.rmtree(tmp, ignore_errors=True)
    return [{**p, "id": p["id"] + above} for p in posts]


def window_posts(db: Path, above: int, changed_every: int = 100) -> list[dict]:
    """The DB's posts with ids above `above` as API objects (what the re-fetched window
    returns), every `changed_every`-th with a new fav_count."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(f"SELECT {', '.join(POST_COLUMNS)} FROM post WHERE id > ? ORDER BY id",
                           (above,)).fetchall()  # fmt: skip
        tags = _page_tags(con, above + 1, rows[-1][0]) if rows else {}
    finally:
        con.close()
    posts = [_api_post(dict(zip(POST_COLUMNS, r, strict=True)), tags.get(r[0])) for r in rows]
    return [{**p, "fav_count": p["fav_count"] + 1} if i % changed_every == 0 else p
            for i, p in enumerate(posts)]  # fmt: skip


def bench_sync(posts: int, n_new: int, rate: float, window: int, burst: float) -> None:
    source = OUT / f"store-{posts}"
    if not snapshot.is_store(source):
        source = bench_import(posts)
    store = OUT / "store-sync"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(source, store, copy_function=os.link)  # partition files are immutable
    top = snapshot.read_snapshot(store).max_post_id
    corpus = new_posts(n_new, top)
    if window:
        corpus += window_posts(ensure_db(posts, 0), top - window)
    with FakeDanbooru(corpus, rate=rate, burst=burst) as api:
        policy = FetchConfig(allowed_hosts=["127.0.0.1"], per_host_rate=rate)
        cfg = SyncConfig(store=store, api_url=api.url, recent_window=window, fetch=policy)
        result = sync_metadata(cfg)
    statuses = Counter(r.status for r in api.requests)
    floor = (statuses[200] - 1) / rate  # the pages and the final empty one, 1 / rate apart
    print(f"sync {n_new:,} new posts (window {window}) into a {posts:,}-post store at "
          f"{rate}/s: {result.seconds:.2f} s, {len(api.requests)} requests {dict(statuses)}, "
          f"floor {floor:.2f} s, overhead {result.seconds - floor:.2f} s "
          f"(fetch {result.timings['fetch'] - floor:.2f} s beyond the floor, merge + publish "
          f"{result.timings['merge_publish']:.2f} s); {result.counts}")  # fmt: skip
    shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    if sys.argv[1:2] == ["_import"]:
        return child_import(Path(sys.argv[2]), Path(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["import", "sync"])
    ap.add_argument("--posts", type=int, default=1_000_000, help="posts of the imported DB")
    ap.add_argument("--db", type=Path, help="import this SQLite file instead (e.g. one made "
                    "by bench/tile_db.py); --posts then only names the store")  # fmt: skip
    ap.add_argument("--new", type=int, default=10_000, help="new posts served to the sync")
    ap.add_argument("--rate", type=float, default=10.0, help="requests/s, server and client")
    ap.add_argument("--window", type=int, default=0, help="recent ids re-fetched")
    ap.add_argument("--burst", type=float, default=2.0,
                    help="the server's token bucket size (1 = strict spacing)")  # fmt: skip
    args = ap.parse_args()
    if args.what == "import":
        bench_import(args.posts, args.db)
    else:
        bench_sync(args.posts, args.new, args.rate, args.window, args.burst)


if __name__ == "__main__":
    main()
