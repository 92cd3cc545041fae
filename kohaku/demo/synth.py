"""Synthetic danbooru2023 metadata databases, for tests and demos without the real multi-GB file.

Reads: ``kohaku/data/danbooru_tags.csv.gz`` (real danbooru tag names, categories and post counts;
see ``kohaku/data/SOURCES.md``).
Writes: ``generate_danbooru_db`` writes one SQLite file with exactly the danbooru2023 schema
(tables ``post``, ``tag``, ``posttagrelation``, empty ``localpost``) whose rows are random but
realistic and a pure function of ``(n_posts, seed, max_id)``, atomically (a temporary file
next to the target, then ``os.replace``). ``kohaku.demo.api_pages`` turns such a database into
danbooru ``/posts.json`` pages.
"""

from __future__ import annotations

import csv
import functools
import gzip
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from kohaku.stage import atomic_path

log = logging.getLogger(__name__)

TAGS_CSV = Path(__file__).parents[1] / "data" / "danbooru_tags.csv.gz"
# danbooru API tag category -> danbooru2023 DB tag.type (0 gen, 1 artist, 2 char, 3 copy, 4 meta)
DANBOORU_TO_SCHEMA = {0: 0, 1: 1, 3: 3, 4: 2, 5: 4}
GENERAL, ARTIST, CHARACTER, COPYRIGHT, META = range(5)
CATEGORY_NAMES = ("general", "artist", "character", "copyright", "meta")
# Real danbooru meta tags that the tag list leaves out: (schema type, approximate post count).
EXTRA_TAGS = {"commentary_request": (META, 2_900_000), "bad_id": (META, 1_000_000),
              "bad_pixiv_id": (META, 900_000), "english_commentary": (META, 420_000),
              "commentary": (META, 380_000), "banned_artist": (META, 12_000)}  # fmt: skip
# Count-like tags: (probability as the post's one count tag, tag added as a pair, pair chance).
COUNT_TAGS = {"1girl": (0.62, "1boy", 0.15), "1boy": (0.09, "1girl", 0.1),
              "2girls": (0.07, "multiple_girls", 1.0), "3girls": (0.02, "multiple_girls", 1.0),
              "4girls": (0.01, "multiple_girls", 1.0), "5girls": (0.005, "multiple_girls", 1.0),
              "6+girls": (0.01, "multiple_girls", 1.0), "multiple_girls": (0.02, "1boy", 0.2),
              "2boys": (0.03, "multiple_boys", 1.0), "3boys": (0.007, "multiple_boys", 1.0),
              "6+boys": (0.003, "multiple_boys", 1.0), "multiple_boys": (0.01, "1girl", 0.3),
              "1other": (0.01, "1girl", 0.1), "no_humans": (0.03, "no_humans", 0.0)}  # fmt: skip
COUNT_RE = re.compile(r"(\d+\+?|multiple_)(girls?|boys?|others?)|no_humans")
RULE_META = (  # noqa: SIM905
    "highres absurdres lowres tall_image wide_image animated animated_gif video sound ugoira "
    "flash commentary_request commentary english_commentary translated translation_request "
    "check_translation bad_id bad_pixiv_id banned_artist"
).split()
EXT_P = {"jpg": 0.62, "png": 0.28, "webp": 0.01, "gif": 0.03, "mp4": 0.03, "webm": 0.015,
         "zip": 0.01, "swf": 0.003, "avif": 0.002}  # fmt: skip
BYTES_PER_PIXEL = {"jpg": 0.35, "png": 1.4, "webp": 0.15, "gif": 0.6, "avif": 0.1}
OTHER_SOURCES = ("https://www.deviantart.com/art/", "https://skeb.jp/works/",
                 "https://seiga.nicovideo.jp/seiga/im",
                 "https://www.artstation.com/artwork/")  # fmt: skip
RATING_P = (0.35, 0.35, 0.15, 0.15)
RATING_LETTERS = "gsqe"
START = datetime(2005, 5, 24, 4, 0, tzinfo=UTC)  # 2005-05-24T00:00-04:00
END = datetime(2024, 6, 1, 3, 59, 59, tzinfo=UTC)  # 2024-05-31T23:59:59-04:00
POST_SQL = """CREATE TABLE post (id INTEGER NOT NULL PRIMARY KEY, created_at VARCHAR NOT NULL,
 uploader_id INTEGER NOT NULL, source VARCHAR NOT NULL, md5 VARCHAR, parent_id INTEGER,
 has_children INTEGER NOT NULL, has_active_children INTEGER NOT NULL, has_large INTEGER NOT NULL,
 has_visible_children INTEGER NOT NULL, is_deleted INTEGER NOT NULL, is_banned INTEGER NOT NULL,
 pixiv_id INTEGER, bit_flags INTEGER NOT NULL, image_width INTEGER NOT NULL,
 image_height INTEGER NOT NULL, file_size INTEGER NOT NULL, file_ext VARCHAR NOT NULL,
 rating INTEGER NOT NULL, score INTEGER NOT NULL, up_score INTEGER NOT NULL,
 down_score INTEGER NOT NULL, fav_count INTEGER NOT NULL, file_url VARCHAR,
 large_file_url VARCHAR, preview_file_url VARCHAR, updated_at VARCHAR NOT NULL)"""
SCHEMA_SQL = f"""{POST_SQL};
CREATE TABLE tag (id INTEGER NOT NULL PRIMARY KEY, name VARCHAR NOT NULL, type INTEGER NOT NULL,
 popularity INTEGER NOT NULL);
CREATE UNIQUE INDEX tag_name ON tag (name);
CREATE TABLE posttagrelation (id INTEGER NOT NULL PRIMARY KEY, post_id INTEGER NOT NULL,
 tag_id INTEGER NOT NULL);
CREATE TABLE localpost (id INTEGER NOT NULL PRIMARY KEY, filepath VARCHAR, latentpath VARCHAR,
 post_id INTEGER);"""
INDEX_SQL = """CREATE INDEX posttagrelation_post_id ON posttagrelation (post_id);
CREATE INDEX posttagrelation_tag_id ON posttagrelation (tag_id);"""
POST_COLUMNS = tuple(line.split()[0] for line in POST_SQL.split("(", 1)[1].split(","))
API_KEYS = (  # noqa: SIM905
    "id created_at uploader_id score source md5 rating image_width image_height tag_string "
    "fav_count file_ext parent_id has_children tag_count_general tag_count_artist "
    "tag_count_character tag_count_copyright file_size up_score down_score is_deleted tag_count "
    "updated_at is_banned pixiv_id has_active_children bit_flags tag_count_meta has_large "
    "has_visible_children tag_string_general tag_string_character tag_string_copyright "
    "tag_string_artist tag_string_meta file_url large_file_url preview_file_url"
).split()
BOOL_COLUMNS = {"has_children", "has_active_children", "has_large", "has_visible_children",
                "is_deleted", "is_banned"}  # fmt: skip


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate_danbooru_db`` wrote: the file, its row counts, id range and seed."""

    path: Path
    posts: int
    tags: int
    relations: int
    max_id: int
    seed: int


@dataclass(frozen=True)
class _Tags:
    """The tag vocabulary in tag-id order (row i has tag id i + 1)."""

    names: np.ndarray
    types: np.ndarray
    counts: np.ndarray
    pos: dict[str, int]  # name -> row index


@functools.cache
def _tag_list() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped tag list plus EXTRA_TAGS as read-only (name, schema type, post count) arrays."""
    with gzip.open(TAGS_CSV, "rt", encoding="utf-8", newline="") as fh:
        rows = [(r[0], DANBOORU_TO_SCHEMA[int(r[1])], int(r[2])) for r in csv.reader(fh)]
    known = {r[0] for r in rows}
    rows += [(name, t, c) for name, (t, c) in EXTRA_TAGS.items() if name not in known]
    names, types, counts = zip(*rows, strict=True)
    arrays = (np.array(names, dtype=object), np.array(types), np.array(counts, dtype=np.int64))
    for arr in arrays:
        arr.setflags(write=False)
    return arrays


def _load_tags(n_posts: int) -> _Tags:
    """The tag vocabulary: each category's top tags by count (all of them for big ``n_posts``)."""
    names, types, counts = _tag_list()
    share = min(1.0, max(2000, 20 * n_posts) / len(names))
    keep = np.isin(names, [*COUNT_TAGS, *RULE_META])
    for t in range(5):
        members = np.flatnonzero(types == t)
        top = members[np.argsort(-counts[members], kind="stable")]
        keep[top[: max(200, int(np.ceil(share * len(members))))]] = True
    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((names[idx].astype(str), -counts[idx]))]
    pos = {name: i for i, name in enumerate(names[order])}
    return _Tags(names[order], types[order], counts[order], pos)


def _eastern(ms: np.ndarray) -> np.ndarray:
    """Format UTC epoch milliseconds as US-Eastern ISO-8601 (``...T12:34:56.789-05:00``)."""
    edges = []
    for year in range(START.year, END.year + 1):
        if year < 2007:  # DST from the first Sunday of April to the last Sunday of October
            a, b = datetime(year, 4, 1, tzinfo=UTC), datetime(year, 10, 31, tzinfo=UTC)
            on, off = a + timedelta((6 - a.weekday()) % 7), b - timedelta((b.weekday() + 1) % 7)
        else:  # from the second Sunday of March to the first Sunday of November
            a, b = datetime(year, 3, 8, tzinfo=UTC), datetime(year, 11, 1, tzinfo=UTC)
            on, off = a + timedelta((6 - a.weekday()) % 7), b + timedelta((6 - b.weekday()) % 7)
        edges += [(on + timedelta(hours=7)).timestamp(), (off + timedelta(hours=6)).timestamp()]
    dst = np.searchsorted(np.array(edges) * 1000, ms, side="right") % 2 == 1
    local = (ms + np.where(dst, -4, -5) * 3_600_000).astype("datetime64[ms]")
    return np.char.add(np.datetime_as_string(local, unit="ms"), np.where(dst, "-04:00", "-05:00"))


def _times(rng: np.random.Generator, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ms of created_at (rising with id position ``u``, faster lately) and updated_at."""
    t0, t1 = int(START.timestamp() * 1000), int(END.timestamp() * 1000)
    created = np.floor(t0 + (t1 - t0) * u**0.55).astype(np.int64)
    delay = rng.exponential(365 * 86_400_000, size=len(u)) * (rng.random(len(u)) < 0.9)
    return created, np.clip(created + delay.astype(np.int64), created, t1)


def _cat(*parts: object) -> np.ndarray:
    """Element-wise string concatenation of arrays and scalars."""
    return functools.reduce(np.char.add, (np.asarray(part, dtype=str) for part in parts))


def _media(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """file_ext, image_width/height (portrait-heavy, some 1:4 and 4:1), file_size, has_large."""
    code = rng.choice(len(EXT_P), size=n, p=np.array(list(EXT_P.values())))
    ext = np.array(list(EXT_P))[code]
    long_side = np.exp(rng.normal(np.log(2000), 0.45, n))
    aspect = np.exp(rng.normal(np.log(1.3), 0.3, n)) * np.where(rng.random(n) < 0.25, 0.6, 1.0)
    extreme = rng.random(n) < 0.01
    stretch = rng.uniform(1.0, 1.3, extreme.sum())
    aspect[extreme] = np.where(rng.random(extreme.sum()) < 0.6, 4.0 * stretch, 0.25 / stretch)
    w, h = long_side / np.maximum(aspect, 1.0), long_side * np.minimum(aspect, 1.0)
    video = np.isin(ext, ["mp4", "webm", "swf"])
    w[video] = rng.choice([640, 1280, 1920, 3840], size=video.sum(), p=[0.2, 0.35, 0.4, 0.05])
    h[video] = w[video] * 9 / 16
    w, h = (np.clip(np.round(x), 300, 8000).astype(np.int64) for x in (w, h))
    bpp = np.array([BYTES_PER_PIXEL.get(e, 0.0) for e in EXT_P])[code]
    size = w * h * bpp * np.exp(rng.normal(0, 0.4, n))
    size = np.where(bpp == 0, np.exp(rng.normal(np.log(4e6), 1.0, n)), size)
    has_large = (w > 850) & ~video
    return {"file_ext": ext, "image_width": w, "image_height": h, "has_large": has_large,
            "file_size": np.maximum(size, 2000).astype(np.int64)}  # fmt: skip


def _md5_and_urls(rng: np.random.Generator, cols: dict, hidden: np.ndarray) -> None:
    """md5 (32 hex chars from the rng) and cdn urls; all NULL where ``hidden`` (restricted)."""
    raw = rng.integers(0, 256, size=(len(hidden), 16), dtype=np.uint8)
    hexd = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = np.empty((len(hidden), 32), dtype=np.uint8)
    chars[:, 0::2], chars[:, 1::2] = hexd[raw >> 4], hexd[raw & 15]

    def text(lo: int, hi: int) -> np.ndarray:
        return np.ascontiguousarray(chars[:, lo:hi]).view(f"S{hi - lo}").ravel().astype(str)

    md5, ext = text(0, 32), cols["file_ext"]
    cdn, sub = "https://cdn.donmai.us/", _cat("/", text(0, 2), "/", text(2, 4), "/")
    orig = _cat(cdn, "original", sub, md5, ".", ext)
    sample = _cat(cdn, "sample", sub, "sample-", md5, np.where(ext == "zip", ".webm", ".jpg"))
    large = np.where(cols["has_large"], sample, orig)
    urls = {"md5": md5, "file_url": orig, "large_file_url": large,
            "preview_file_url": _cat(cdn, "preview", sub, md5, ".jpg")}  # fmt: skip
    for key, arr in urls.items():
        cols[key] = np.where(hidden, None, arr.astype(object))


def _sources(rng: np.random.Generator, created: np.ndarray, ext: np.ndarray) -> dict:
    """source urls (pixiv, twitter, other sites or empty) and pixiv_id for pixiv posts."""
    n = len(created)
    year = created / (365.2425 * 86_400_000) + 1970
    kind = rng.choice(4, size=n, p=[0.45, 0.25, 0.15, 0.15])  # pixiv, twitter, other, none
    kind[((kind == 0) & (year < 2007.8)) | ((kind == 1) & (year < 2010.9))] = 2
    frac = np.clip((year - 2007.7) / (2024.5 - 2007.7), 0, 1)
    pixiv_id = (118e6 * frac**1.6 * rng.uniform(0.97, 1.0, n)).astype(np.int64) + 1
    jst = np.datetime_as_string((created + 9 * 3_600_000).astype("datetime64[ms]"), unit="s")
    path = np.char.replace(np.char.replace(np.char.replace(jst, "-", "/"), "T", "/"), ":", "/")
    pext = np.where(np.isin(ext, ["png", "gif"]), ext, "jpg")
    pixiv = _cat("https://i.pximg.net/img-original/img/", path, "/", pixiv_id, "_p0.", pext)
    snowflake = ((created - 1_288_834_974_657) << 22) + rng.integers(0, 1 << 22, n)
    handles = _cat("artist", rng.zipf(1.3, n) % 100_000)
    twitter = _cat("https://twitter.com/", handles, "/status/", snowflake)
    hosts = np.array(OTHER_SOURCES)[rng.integers(0, len(OTHER_SOURCES), n)]
    other = _cat(hosts, rng.integers(10_000, 99_999_999, n))
    source = np.select([kind == 0, kind == 1, kind == 2], [pixiv, twitter, other], "")
    return {"source": source, "pixiv_id": np.where(kind == 0, pixiv_id, None)}


def _family(rng: np.random.Generator, ids: np.ndarray, deleted: np.ndarray) -> dict:
    """parent_id (~7% of posts point at a slightly older post) and the has_*children flags."""
    n, pos = len(ids), np.arange(len(ids))
    child = (rng.random(n) < 0.07) & (pos > 0)
    parent_pos = np.maximum(pos - rng.geometric(0.4, n), 0)
    children = np.bincount(parent_pos[child], minlength=n)
    active = np.bincount(parent_pos[child & ~deleted], minlength=n)
    return {"parent_id": np.where(child, ids[parent_pos], None), "has_children": children > 0,
            "has_active_children": active > 0, "has_visible_children": active > 0}  # fmt: skip


def _scores(rng: np.random.Generator, u: np.ndarray, rating: np.ndarray, gone: np.ndarray) -> dict:
    """Heavy-tailed fav_count (newer and more explicit posts higher) and correlated scores."""
    mu = -0.6 + 3.6 * u + np.array([0.0, 0.25, 0.5, 0.9])[rating] - 0.8 * gone
    fav = np.maximum(np.floor(np.exp(rng.normal(mu, 1.1))) - 1, 0).astype(np.int64)
    up = rng.binomial(fav, 0.45 + 0.3 * u) + rng.poisson(0.3 + u)
    down = -rng.poisson(0.01 * fav + 0.15 + 0.5 * gone)
    return {"fav_count": fav, "up_score": up, "down_score": down, "score": up + down}


def _posts(rng: np.random.Generator, ids: np.ndarray, max_id: int) -> dict[str, np.ndarray]:
    """All ``post`` columns (numpy arrays, object arrays where nullable) for sorted ``ids``."""
    n, u = len(ids), (ids - 1) / max(max_id - 1, 1)
    created, updated = _times(rng, u)
    cols = {"id": ids, "created_at": _eastern(created), "updated_at": _eastern(updated), "u": u}
    cols["rating"] = rng.choice(4, size=n, p=RATING_P)
    cols["is_deleted"], cols["is_banned"] = rng.random(n) < 0.06, rng.random(n) < 0.005
    cols.update(_media(rng, n))
    _md5_and_urls(rng, cols, cols["is_banned"] | (rng.random(n) < 0.02))
    cols.update(_sources(rng, created, cols["file_ext"]))
    cols.update(_family(rng, ids, cols["is_deleted"]))
    cols.update(_scores(rng, u, cols["rating"], cols["is_deleted"]))
    uploaders = 1 + rng.choice(1_000_000, size=min(max(10, n // 20), 500_000), replace=False)
    weights = (np.arange(len(uploaders)) + 5.0) ** -1.1
    cols["uploader_id"] = rng.choice(uploaders, size=n, p=weights / weights.sum())
    cols["bit_flags"] = np.zeros(n, dtype=np.int64)
    return cols


def _draw(rng: np.random.Generator, tags: _Tags, pool: np.ndarray, k: np.ndarray) -> tuple:
    """``k[i]`` tags for post i from ``pool``, weighted by their danbooru post counts."""
    weights = tags.counts[pool] / tags.counts[pool].sum()
    post = np.repeat(np.arange(len(k)), k)
    return post, pool[rng.choice(len(pool), size=len(post), p=weights)]


def _count_pairs(rng: np.random.Generator, tags: _Tags, n: int) -> tuple:
    """One count-like tag per post (1girl most), sometimes a second (1girl + 1boy, 2girls + ...)."""
    spec = list(COUNT_TAGS.values())
    p = np.array([s[0] for s in spec])
    first = rng.choice(len(spec), size=n, p=p / p.sum())
    second = rng.random(n) < np.array([s[2] for s in spec])[first]
    idx = np.array([tags.pos[name] for name in COUNT_TAGS])
    pair = np.array([tags.pos[s[1]] for s in spec])
    return (np.concatenate([np.arange(n), np.flatnonzero(second)]),
            np.concatenate([idx[first], pair[first][second]]))  # fmt: skip


def _rule_meta(rng: np.random.Generator, tags: _Tags, cols: dict) -> tuple:
    """Meta tags that follow from the post: resolution, media kind, commentary, bad_id, ..."""
    n, w, h, ext = len(cols["id"]), cols["image_width"], cols["image_height"], cols["file_ext"]
    coin = lambda p: rng.random(n) < p  # noqa: E731
    video, translated = np.isin(ext, ["mp4", "webm"]), coin(0.07)
    animated = np.isin(ext, ["mp4", "webm", "zip", "swf"]) | ((ext == "gif") & coin(0.7))
    bad_pixiv = (cols["pixiv_id"] != None) & coin(0.3)  # noqa: E711
    masks = {"highres": (w >= 1600) | (h >= 1200), "absurdres": (w >= 3200) | (h >= 2400),
             "lowres": (w <= 500) & (h <= 500), "tall_image": h >= 4 * w, "wide_image": w >= 4 * h,
             "animated": animated, "animated_gif": animated & (ext == "gif"), "video": video,
             "sound": video & coin(0.5), "ugoira": ext == "zip", "flash": ext == "swf",
             "commentary_request": coin(0.4), "commentary": coin(0.05),
             "english_commentary": coin(0.06), "translated": translated,
             "translation_request": coin(0.07) & ~translated,
             "check_translation": translated & coin(0.08), "bad_pixiv_id": bad_pixiv,
             "bad_id": bad_pixiv | coin(0.03),
             "banned_artist": cols["is_banned"] | coin(0.001)}  # fmt: skip
    posts = [np.flatnonzero(m) for m in masks.values()]
    ids = [np.full(len(p), tags.pos[name]) for name, p in zip(masks, posts, strict=True)]
    return np.concatenate(posts), np.concatenate(ids)


def _tag_pairs(rng: np.random.Generator, tags: _Tags, cols: dict) -> tuple:
    """(post index, tag index) rows, ~30 per post, unique, contiguous per post, shuffled within."""
    n, u = len(cols["id"]), cols["u"]
    counted = {name for name in tags.names if COUNT_RE.fullmatch(name)}
    special = np.isin(tags.names, [*counted, *RULE_META])
    general_k = np.exp(rng.normal(np.log(23.0), 0.45, n)) * (0.8 + 0.3 * u)
    per_type = {GENERAL: np.clip(np.round(general_k), 3, 150).astype(np.int64),
                ARTIST: (rng.random(n) < 0.93).astype(np.int64),
                CHARACTER: rng.choice(4, size=n, p=[0.3, 0.45, 0.15, 0.1]),
                COPYRIGHT: rng.choice(3, size=n, p=[0.12, 0.7, 0.18]),
                META: rng.poisson(0.6, n)}  # fmt: skip
    parts = [_count_pairs(rng, tags, n), _rule_meta(rng, tags, cols)]
    for kind, k in per_type.items():
        parts.append(_draw(rng, tags, np.flatnonzero((tags.types == kind) & ~special), k))
    keys = np.sort(np.concatenate([p * len(tags.names) + t for p, t in parts]))
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    post, tag = np.divmod(keys, len(tags.names))
    order = np.argsort((post << 24) + rng.integers(0, 1 << 24, len(post)), kind="stable")
    return post[order], tag[order]


def _insert(con: sqlite3.Connection, table: str, columns: list, chunk: int) -> None:
    """executemany over zipped ``.tolist()`` column chunks."""
    sql = f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})"
    for lo in range(0, len(columns[0]), chunk):
        con.executemany(sql, zip(*(c[lo : lo + chunk].tolist() for c in columns), strict=True))


def _write_db(path: Path, cols: dict, tags: _Tags, post: np.ndarray, tag: np.ndarray) -> None:
    """Create the schema and insert all rows in one transaction; popularity = relation counts."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.executescript(SCHEMA_SQL)
        con.execute("BEGIN")
        popularity = np.bincount(tag, minlength=len(tags.names))
        tag_ids = np.arange(1, len(tags.names) + 1)
        _insert(con, "tag", [tag_ids, tags.names, tags.types, popularity], 100_000)
        _insert(con, "post", [cols[c] for c in POST_COLUMNS], 50_000)
        # ids 1..R in row order: SQLite gives each new row max(id) + 1 in a fresh table
        _insert(con, "posttagrelation (post_id, tag_id)", [cols["id"][post], tag + 1], 500_000)
        con.execute("COMMIT")
        con.executescript(INDEX_SQL)
    finally:
        con.close()


def _check_args(path: Path, n_posts: int, max_id: int | None, overwrite: bool) -> int:
    """Validate ``generate_danbooru_db``'s arguments; return the effective ``max_id``."""
    if isinstance(n_posts, bool) or not isinstance(n_posts, int | np.integer) or n_posts < 1:
        raise ValueError(f"n_posts must be an integer >= 1, got {n_posts!r}")
    max_id = round(n_posts * 1.1) if max_id is None else int(max_id)
    if n_posts > max_id:
        raise ValueError(f"n_posts ({n_posts}) must not exceed max_id ({max_id}): ids are unique")
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    return max_id


def generate_danbooru_db(
    path: Path, n_posts: int, seed: int = 0, max_id: int | None = None, overwrite: bool = False
) -> SynthSummary:
    """Write a synthetic danbooru2023 SQLite database of ``n_posts`` posts to ``path``.

    Post ids are ``n_posts`` distinct random ids in ``[1, max_id]`` (default ``round(1.1 *
    n_posts)``); every table's content is a pure function of ``(n_posts, seed, max_id)``.
    Small databases draw from each category's most used tags only; ``tag.popularity`` is the
    number of generated relation rows of the tag. 200k posts (~6M relations) take ~30 s.
    Raises ValueError for ``n_posts < 1`` or ``n_posts > max_id`` and FileExistsError when
    ``path`` exists and ``overwrite`` is false.
    """
    path, max_id = Path(path), _check_args(path, n_posts, max_id, overwrite)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    tags = _load_tags(n_posts)
    ids = np.sort(rng.choice(max_id, size=n_posts, replace=False)) + 1
    cols = _posts(rng, ids, max_id)
    post, tag = _tag_pairs(rng, tags, cols)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _write_db(tmp, cols, tags, post, tag)
    log.info("wrote %s: %d posts, %d tags, %d relations in %.1f s",
             path, n_posts, len(tags.names), len(post), time.perf_counter() - start)  # fmt: skip
    return SynthSummary(path, int(n_posts), len(tags.names), len(post), max_id, seed)
