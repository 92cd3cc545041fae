"""Tests of kohaku.demo.synth: synthetic danbooru2023 databases and /posts.json pages from them."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from kohaku.demo.api_pages import write_api_pages
from kohaku.demo.synth import SynthSummary, generate_danbooru_db

N_POSTS = 3000
# The danbooru2023 schema (shared danbooru_schema.md): (column, declared type) in table order.
POST_SCHEMA = [
    ("id", "INTEGER"), ("created_at", "VARCHAR"), ("uploader_id", "INTEGER"),
    ("source", "VARCHAR"), ("md5", "VARCHAR"), ("parent_id", "INTEGER"),
    ("has_children", "INTEGER"), ("has_active_children", "INTEGER"), ("has_large", "INTEGER"),
    ("has_visible_children", "INTEGER"), ("is_deleted", "INTEGER"), ("is_banned", "INTEGER"),
    ("pixiv_id", "INTEGER"), ("bit_flags", "INTEGER"), ("image_width", "INTEGER"),
    ("image_height", "INTEGER"), ("file_size", "INTEGER"), ("file_ext", "VARCHAR"),
    ("rating", "INTEGER"), ("score", "INTEGER"), ("up_score", "INTEGER"),
    ("down_score", "INTEGER"), ("fav_count", "INTEGER"), ("file_url", "VARCHAR"),
    ("large_file_url", "VARCHAR"), ("preview_file_url", "VARCHAR"), ("updated_at", "VARCHAR"),
]  # fmt: skip
NULLABLE = {"md5", "parent_id", "pixiv_id", "file_url", "large_file_url", "preview_file_url"}
TABLES = {
    "post": POST_SCHEMA,
    "tag": [("id", "INTEGER"), ("name", "VARCHAR"), ("type", "INTEGER"), ("popularity", "INTEGER")],
    "posttagrelation": [("id", "INTEGER"), ("post_id", "INTEGER"), ("tag_id", "INTEGER")],
    "localpost": [("id", "INTEGER"), ("filepath", "VARCHAR"), ("latentpath", "VARCHAR"),
                  ("post_id", "INTEGER")],
}  # fmt: skip
# Keys of a real danbooru /posts.json object (booru-rs_danbooru_posts_2023.json) that the DB has.
API_KEYS = (  # noqa: SIM905
    "id created_at uploader_id score source md5 rating image_width image_height tag_string "
    "fav_count file_ext parent_id has_children tag_count_general tag_count_artist "
    "tag_count_character tag_count_copyright file_size up_score down_score is_deleted tag_count "
    "updated_at is_banned pixiv_id has_active_children bit_flags tag_count_meta has_large "
    "has_visible_children tag_string_general tag_string_character tag_string_copyright "
    "tag_string_artist tag_string_meta file_url large_file_url preview_file_url"
).split()
API_BOOLS = {"has_children", "is_deleted", "is_banned", "has_active_children", "has_large",
             "has_visible_children"}  # fmt: skip
CATEGORIES = ("general", "artist", "character", "copyright", "meta")
COUNT_TAGS = {"1girl", "1boy", "2girls", "3girls", "4girls", "5girls", "6+girls", "2boys",
              "3boys", "6+boys", "multiple_girls", "multiple_boys", "1other",
              "no_humans"}  # fmt: skip
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}-0[45]:00")


def _query(path: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _dump(path: Path) -> dict[str, list[tuple]]:
    return {table: _query(path, f"SELECT * FROM {table} ORDER BY id") for table in TABLES}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return generate_danbooru_db(tmp_path_factory.mktemp("synth") / "danbooru.db", N_POSTS, seed=7)


@pytest.fixture(scope="module")
def posts(db: SynthSummary) -> list[dict]:
    con = sqlite3.connect(db.path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM post ORDER BY id")]
    finally:
        con.close()


@pytest.fixture(scope="module")
def post_tags(db: SynthSummary) -> dict[int, list[tuple[str, int]]]:
    """(name, type) of each post's tags, in relation-id order."""
    rows = _query(
        db.path,
        "SELECT r.post_id, t.name, t.type FROM posttagrelation r JOIN tag t ON t.id = r.tag_id"
        " ORDER BY r.id",
    )
    out: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for post_id, name, kind in rows:
        out[post_id].append((name, kind))
    return out


def test_schema_matches_danbooru2023(db: SynthSummary) -> None:
    con = sqlite3.connect(db.path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == set(TABLES)
        for table, expected in TABLES.items():
            info = con.execute(f"PRAGMA table_info({table})").fetchall()
            assert [(r[1], r[2]) for r in info] == expected, table
            assert [r[1] for r in info if r[5]] == ["id"], f"{table}: id is the primary key"
        nullable = {r[1] for r in con.execute("PRAGMA table_info(post)") if not r[3]}
        assert nullable == NULLABLE
        indexed = {
            con.execute(f"PRAGMA index_info({idx[1]})").fetchone()[2]: idx[2]
            for idx in con.execute("PRAGMA index_list(posttagrelation)")
        }
        assert indexed == {"post_id": 0, "tag_id": 0}
        unique = [i[1] for i in con.execute("PRAGMA index_list(tag)") if i[2]]
        assert [con.execute(f"PRAGMA index_info({u})").fetchone()[2] for u in unique] == ["name"]
        assert con.execute("SELECT count(*) FROM localpost").fetchone() == (0,)
    finally:
        con.close()


def test_summary_counts(db: SynthSummary) -> None:
    assert (db.posts, db.max_id, db.seed) == (N_POSTS, round(N_POSTS * 1.1), 7)
    counts = [
        _query(db.path, f"SELECT count(*) FROM {t}")[0][0] for t in ("tag", "posttagrelation")
    ]
    assert counts == [db.tags, db.relations]
    assert not [p for p in db.path.parent.iterdir() if ".tmp-" in p.name]


def test_same_seed_same_rows_other_seed_differs(tmp_path: Path) -> None:
    a = generate_danbooru_db(tmp_path / "a.db", 300, seed=3)
    b = generate_danbooru_db(tmp_path / "b.db", 300, seed=3)
    c = generate_danbooru_db(tmp_path / "c.db", 300, seed=4)
    dump_a = _dump(a.path)
    assert dump_a == _dump(b.path)
    dump_c = _dump(c.path)
    assert dump_a["post"] != dump_c["post"]
    assert dump_a["posttagrelation"] != dump_c["posttagrelation"]


def test_ids_sparse_unique_and_times_increase(db: SynthSummary, posts: list[dict]) -> None:
    ids = [p["id"] for p in posts]
    assert len(ids) == len(set(ids)) == N_POSTS
    assert ids[0] >= 1 and ids[-1] <= db.max_id
    gaps = sum(b - a > 1 for a, b in zip(ids, ids[1:], strict=False))
    assert gaps > N_POSTS // 20, "ids have gaps like real danbooru"
    created = [p["created_at"] for p in posts]
    updated = [p["updated_at"] for p in posts]
    assert all(TIME_RE.fullmatch(t) for t in created + updated)
    times = [datetime.fromisoformat(t) for t in created]
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    assert times[0].year >= 2005 and times[-1] <= datetime.fromisoformat("2024-06-01T00:00-04:00")
    assert all(datetime.fromisoformat(u) >= t for u, t in zip(updated, times, strict=True))
    offsets = Counter(t[-6:] for t in created)
    assert set(offsets) == {"-04:00", "-05:00"}


def test_post_columns_look_like_danbooru(posts: list[dict]) -> None:
    n = len(posts)
    deleted = sum(p["is_deleted"] for p in posts) / n
    assert 0.035 < deleted < 0.09
    assert 0 < sum(p["is_banned"] for p in posts) < 0.015 * n
    ratings = Counter(p["rating"] for p in posts)
    for rating, share in enumerate((0.35, 0.35, 0.15, 0.15)):
        assert abs(ratings[rating] / n - share) < 0.04
    exts = Counter(p["file_ext"] for p in posts)
    assert 0.55 < exts["jpg"] / n < 0.69 and 0.22 < exts["png"] / n < 0.34
    assert exts["mp4"] > 0 and exts["gif"] > 0 and exts["webm"] > 0
    assert all(300 <= p[k] <= 8000 for p in posts for k in ("image_width", "image_height"))
    assert sum(p["image_height"] > p["image_width"] for p in posts) > n / 2
    assert any(p["image_height"] >= 4 * p["image_width"] for p in posts)
    hidden = [p for p in posts if p["md5"] is None]
    assert all(p["md5"] is None for p in posts if p["is_banned"])
    assert 0.01 < len(hidden) / n < 0.05
    assert all(
        p["file_url"] is p["large_file_url"] is p["preview_file_url"] is None for p in hidden
    )
    for p in posts:
        if p["md5"] is not None:
            md5 = p["md5"]
            assert re.fullmatch(r"[0-9a-f]{32}", md5)
            assert p["file_url"] == (
                f"https://cdn.donmai.us/original/{md5[:2]}/{md5[2:4]}/{md5}.{p['file_ext']}"
            )
            assert p["preview_file_url"].endswith(f"/preview/{md5[:2]}/{md5[2:4]}/{md5}.jpg")
    assert len({p["md5"] for p in posts} - {None}) == n - len(hidden)
    assert all(p["score"] == p["up_score"] + p["down_score"] for p in posts)
    assert 0.3 < sum(p["pixiv_id"] is not None for p in posts) / n < 0.6
    parents = {p["parent_id"] for p in posts} - {None}
    assert parents and all(p["has_children"] for p in posts if p["id"] in parents)


def test_fav_count_heavy_tailed_newer_and_explicit_higher(posts: list[dict]) -> None:
    favs = sorted(p["fav_count"] for p in posts)
    assert favs[-1] > 20 * max(favs[len(favs) // 2], 1)
    old, new = posts[: len(posts) // 3], posts[-len(posts) // 3 :]
    zeros = [sum(p["fav_count"] == 0 for p in half) / len(half) for half in (old, new)]
    assert zeros[0] > 0.5 > zeros[1]

    def mean(rating: int) -> float:
        values = [p["fav_count"] for p in posts if p["rating"] == rating]
        return sum(values) / len(values)

    assert mean(3) > mean(0)


def test_tags_per_post_and_popularity(db: SynthSummary, post_tags: dict) -> None:
    assert len(post_tags) == N_POSTS
    assert 25 < db.relations / N_POSTS < 35
    pairs = _query(db.path, "SELECT post_id, tag_id FROM posttagrelation")
    assert len(pairs) == len(set(pairs)), "no tag twice on a post"
    per_tag = Counter(tag_id for _, tag_id in pairs)
    tags = _query(db.path, "SELECT id, name, type, popularity FROM tag")
    assert all(pop == per_tag[tag_id] for tag_id, _, _, pop in tags)
    types = {name: kind for _, name, kind, _ in tags}
    assert types["1girl"] == 0 and types["highres"] == 4 and types["original"] == 3
    assert types["hatsune_miku"] == 2 and types["fate_(series)"] == 3
    assert types["banned_artist"] in (1, 4)
    for tag_list in post_tags.values():
        assert 1 <= len(COUNT_TAGS & {name for name, _ in tag_list}) <= 2
    kinds = Counter(kind for tag_list in post_tags.values() for _, kind in tag_list)
    assert all(kinds[k] > N_POSTS / 2 for k in range(5)), kinds


def test_tag_rows_contiguous_and_unsorted(db: SynthSummary, post_tags: dict) -> None:
    post_ids = [r[0] for r in _query(db.path, "SELECT post_id FROM posttagrelation ORDER BY id")]
    assert post_ids == sorted(post_ids), "one post's rows are contiguous"
    in_order = sum([n for n, _ in t] == sorted(n for n, _ in t) for t in post_tags.values())
    assert in_order < N_POSTS * 0.05, "tag order within a post is not by name"
    by_post = defaultdict(list)
    for post_id, tag_id in _query(
        db.path, "SELECT post_id, tag_id FROM posttagrelation ORDER BY id"
    ):
        by_post[post_id].append(tag_id)
    in_id_order = sum(ids == sorted(ids) or ids == sorted(ids)[::-1] for ids in by_post.values())
    assert in_id_order < N_POSTS * 0.05, "nor by tag id"


def test_realistic_tag_names_and_meta_rules(posts: list[dict], post_tags: dict) -> None:
    used = {name for tag_list in post_tags.values() for name, _ in tag_list}
    assert any(len(name) <= 3 and not name.isalnum() for name in used), "emoticons like ^_^"
    assert len([name for name in used if "_(" in name and name.endswith(")")]) > 50
    assert {"highres", "absurdres", "commentary_request", "translated", "bad_id"} <= used
    names = {pid: {name for name, _ in tag_list} for pid, tag_list in post_tags.items()}
    assert all("video" in names[p["id"]] for p in posts if p["file_ext"] in ("mp4", "webm"))
    assert all("highres" in names[p["id"]] for p in posts if p["image_width"] >= 1600)
    banned = [p["id"] for p in posts if p["is_banned"]]
    assert all("banned_artist" in names[pid] for pid in banned)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    generate_danbooru_db(path, 50, seed=1)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_danbooru_db(path, 60, seed=2)
    assert path.read_bytes() == before
    summary = generate_danbooru_db(path, 60, seed=2, overwrite=True)
    assert summary.posts == 60 == _query(path, "SELECT count(*) FROM post")[0][0]
    assert [p.name for p in tmp_path.iterdir()] == ["x.db"]


@pytest.mark.parametrize("n_posts", [0, -3, 2.5, True])
def test_rejects_bad_n_posts(tmp_path: Path, n_posts: object) -> None:
    with pytest.raises(ValueError, match="n_posts"):
        generate_danbooru_db(tmp_path / "x.db", n_posts)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_rejects_more_posts_than_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_id"):
        generate_danbooru_db(tmp_path / "x.db", 10, max_id=9)
    summary = generate_danbooru_db(tmp_path / "y.db", 10, max_id=10)
    ids = [r[0] for r in _query(summary.path, "SELECT id FROM post ORDER BY id")]
    assert ids == list(range(1, 11))


def test_api_pages_round_trip(
    db: SynthSummary, posts: list[dict], post_tags: dict, tmp_path: Path
) -> None:
    pages = write_api_pages(db.path, tmp_path / "api", page_size=700)
    assert [p.name for p in pages] == [f"posts-{i:05d}.json" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == [p.name for p in pages]
    objs = [o for page in pages for o in json.loads(page.read_text(encoding="utf-8"))]
    assert [len(json.loads(p.read_text())) for p in pages] == [700, 700, 700, 700, 200]
    by_id = {p["id"]: p for p in posts}
    assert [o["id"] for o in objs] == sorted(by_id, reverse=True)
    for obj in objs:
        assert list(obj) == API_KEYS
        row = by_id[obj["id"]]
        assert obj["rating"] == "gsqe"[row["rating"]]
        assert all(obj[k] is bool(row[k]) for k in API_BOOLS)
        for key in ("md5", "file_url", "created_at", "fav_count", "parent_id", "pixiv_id"):
            assert obj[key] == row[key]
        tags = post_tags[obj["id"]]
        for kind, cat in enumerate(CATEGORIES):
            expected = sorted(name for name, k in tags if k == kind)
            assert obj[f"tag_string_{cat}"] == " ".join(expected)
            assert obj[f"tag_count_{cat}"] == len(expected)
        assert obj["tag_string"].split() == sorted(name for name, _ in tags)
        assert obj["tag_count"] == len(tags)


def test_api_pages_validate_arguments(db: SynthSummary, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="page_size"):
        write_api_pages(db.path, tmp_path, page_size=0)
    with pytest.raises(FileNotFoundError):
        write_api_pages(tmp_path / "missing.db", tmp_path / "out")
