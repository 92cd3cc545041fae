"""Sync from a fake danbooru API on 127.0.0.1: every post once, changes picked up, a polite
client (rate, Retry-After, retries, User-Agent), only changed partitions rewritten, and the
sample stage reading the new snapshot."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from kohaku.metadata import snapshot
from kohaku.metadata.sync import sync_metadata
from kohaku.sample import SampleConfig, run_sample
from tests.metadata.conftest import OLD_MAX, named_tags, posts_of, sync_config
from tests.metadata.fake_danbooru import FakeDanbooru


def test_every_new_post_arrives_once_and_matches_a_fresh_import(
    store: Path, corpus: list[dict], truth: Path
) -> None:
    base = snapshot.read_snapshot(store)
    with FakeDanbooru(corpus) as api:
        result = sync_metadata(sync_config(store, api.url))
    served = Counter(api.served_ids())
    assert max(served.values()) == 1  # no post fetched twice
    assert set(served) == {p["id"] for p in corpus if p["id"] > base.max_post_id - 300}
    assert posts_of(store).equals(posts_of(truth))
    assert named_tags(store).equals(named_tags(truth))
    snap = snapshot.read_snapshot(store)
    assert snapshot.latest_id(store) == result.snapshot == snap.id and snap.parent == base.id
    assert result.counts["new_posts"] == sum(p["id"] > OLD_MAX for p in corpus)
    # nothing changed below OLD_MAX: every old partition (the re-fetched one too) is shared
    old = {p.file for p in base.tables["post"]}
    assert old <= {p.file for p in snap.tables["post"]}
    assert result.counts["rewritten"]["post"] == len(snap.tables["post"]) - len(old)


def test_changes_between_syncs_are_picked_up(store: Path, corpus: list[dict], tmp_path: Path):
    older = [p for p in corpus if p["id"] <= 2600]
    with FakeDanbooru(older) as api:
        first = sync_metadata(sync_config(store, api.url))
        top = [p["id"] for p in older if not p["is_deleted"]][-50:]  # inside the next window
        deleted, expunged, faved, retagged = top[0], top[1], top[2], top[3]
        api.delete(deleted)
        api.expunge(expunged)
        api.set_fav_count(faved, 4321)
        post = api.posts[retagged]
        moved = _unused_general_tag(corpus, above=2000)  # shown as meta from now on
        api.posts[retagged] = {
            **post,
            "tag_string_general": "brand_new_tag " + post["tag_string_general"],
            "tag_string_meta": f"{post['tag_string_meta']} {moved}".strip(),
        }
        api.add([p for p in corpus if p["id"] > 2600])
        second = sync_metadata(sync_config(store, api.url))
    assert second.parent == first.snapshot != second.snapshot
    posts = posts_of(store)
    row = {r["id"]: r for r in posts.filter(pl.col("id").is_in(top[:4])).to_dicts()}
    assert row[deleted]["is_deleted"] == 1 and row[expunged]["is_deleted"] == 1
    assert row[faved]["fav_count"] == 4321
    assert second.counts["marked_deleted"] == 1 and second.counts["retagged_posts"] == 1
    assert second.counts["new_tags"] >= 1  # brand_new_tag and the new posts' tags
    tags = named_tags(store).filter(pl.col("post_id") == retagged)
    assert tags.filter(pl.col("name") == "brand_new_tag")["type"].to_list() == [0]
    assert tags.filter(pl.col("name") == moved)["type"].to_list() == [4]
    assert not tags.is_duplicated().any()
    # the category belongs to the tag: older posts that have it show it as meta too
    assert set(named_tags(store).filter(pl.col("name") == moved)["type"]) == {4}
    assert posts["id"].max() == corpus[-1]["id"] and posts.height == len(corpus)
    # the old snapshot is still there, unchanged
    assert posts_of(store, first.snapshot)["id"].max() <= 2600

    # the sample stage sees the new posts in the latest snapshot, and records which it read
    cfg = SampleConfig(source=store, seed=1, ranges=[{"start": 0, "count": "all"}])
    manifest = run_sample(cfg, tmp_path / "new")
    chosen = pl.read_parquet(tmp_path / "new" / "sample" / "posts.parquet")["id"]
    assert manifest.inputs["snapshot"] == second.snapshot and chosen.max() > 2600
    assert deleted not in chosen and expunged not in chosen
    run_sample(cfg.model_copy(update={"snapshot": first.snapshot}), tmp_path / "old")
    assert pl.read_parquet(tmp_path / "old" / "sample" / "posts.parquet")["id"].max() <= 2600


def _unused_general_tag(corpus: list[dict], above: int) -> str:
    """A general tag of a post with id <= `above` that no later post has."""
    later = {n for p in corpus if p["id"] > above for n in p["tag_string_general"].split()}
    older = (n for p in corpus if p["id"] <= above for n in p["tag_string_general"].split())
    return next(n for n in older if n not in later)


def test_polite_client_keeps_the_rate_and_retries_server_errors(
    store: Path, corpus: list[dict], truth: Path
) -> None:
    rate = 10.0
    with FakeDanbooru(corpus, rate=12.0, burst=2, fail_every=4) as api:
        cfg = sync_config(store, api.url, per_host_rate=rate)
        sync_metadata(cfg.model_copy(update={"page_limit": 200}))
    # The client spaces its request starts by 1 / rate. Arrival times seen by the server
    # carry scheduling noise (this 2-core machine runs other suites): no stretch of requests,
    # the whole sync included, arrives faster than the rate by more than 0.1 s. The server's
    # own limit (12/s, burst 2) answered no 429.
    at = [r.at for r in api.requests]
    spans = [at[j] - at[i] - (j - i) / rate for i in range(len(at)) for j in range(i + 1, len(at))]
    assert min(spans) >= -0.1
    statuses = Counter(r.status for r in api.requests)
    assert statuses[500] >= 2 and statuses[429] == 0
    assert posts_of(store).equals(posts_of(truth))
    agents = {r.user_agent for r in api.requests}
    assert len(agents) == 1 and "kohaku" in agents.pop()


def test_429_waits_for_retry_after(store: Path, corpus: list[dict]) -> None:
    few = [p for p in corpus if p["id"] <= OLD_MAX + 250]
    with FakeDanbooru(few, rate=10.0, retry_after=1) as api:
        cfg = sync_config(store, api.url, per_host_rate=100.0)
        sync_metadata(cfg.model_copy(update={"recent_window": 0, "page_limit": 200}))
    reqs = api.requests
    limited = [i for i, r in enumerate(reqs) if r.status == 429]
    assert limited and all(reqs[i + 1].at - reqs[i].at >= 0.9 for i in limited)
    assert posts_of(store)["id"].max() == few[-1]["id"]


def test_prune_keeps_the_newest_snapshots_and_their_files(store: Path, corpus: list[dict]):
    from kohaku.metadata.prune import prune_store

    base = snapshot.latest_id(store)
    with FakeDanbooru([p for p in corpus if p["id"] <= 2600]) as api:
        first = sync_metadata(sync_config(store, api.url)).snapshot
        api.add(corpus)
        second = sync_metadata(sync_config(store, api.url)).snapshot
    before = posts_of(store)
    result = prune_store(store, keep=1, protect=(base,))
    assert result.snapshots_removed == [first] and result.files_removed > 0
    assert snapshot.list_ids(store) == sorted([base, second])
    assert posts_of(store).equals(before)
    assert posts_of(store, base).height == sum(p["id"] <= OLD_MAX for p in corpus)
    on_disk = {str(p.relative_to(store)) for p in (store / "parts").glob("*/*.parquet")}
    named = {p.file for s in (base, second) for t in snapshot.TABLES
             for p in snapshot.read_snapshot(store, s).tables[t]}  # fmt: skip
    assert on_disk == named


def test_real_danbooru_json(store: Path, corpus: list[dict]) -> None:
    """Posts exactly as danbooru served them (tests/assets, 2020 and 2023) sync like ours."""
    import json

    assets = Path(__file__).parents[1] / "assets"
    real = [p for f in assets.glob("*_danbooru_posts_*.json") for p in json.loads(f.read_text())]
    # a gold-only post: danbooru leaves the file keys out of the JSON
    hidden = ("md5", "file_url", "large_file_url", "preview_file_url")
    real[0] = {k: v for k, v in real[0].items() if k not in hidden}
    with FakeDanbooru([p for p in corpus if p["id"] <= OLD_MAX] + real) as api:
        result = sync_metadata(sync_config(store, api.url))
    assert result.counts["new_posts"] == len(real) == 20
    posts = posts_of(store).filter(pl.col("id") >= 4_000_000)
    letters = {p["id"]: "gsqe".index(p["rating"]) for p in real}
    assert dict(zip(posts["id"], posts["rating"], strict=True)) == letters
    restricted = posts.filter(pl.col("id") == real[0]["id"]).row(0, named=True)
    assert restricted["md5"] is None and restricted["file_url"] is None
    tags = named_tags(store).filter(pl.col("post_id") == 6148688)
    assert tags.filter(pl.col("name") == "ekz_(robotekz)")["type"].to_list() == [1]  # artist
    assert tags.filter(pl.col("name") == "lady_zuri")["type"].to_list() == [2]  # character
    assert tags.height == 18  # its tag_count
