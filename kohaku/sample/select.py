"""Seeded selection SQL: candidates per id range, filter flags, ranks by sample key.

Reads the views defined by `kohaku.metadata.source`; writes temp tables `ranges`,
`cand` (id, range, sample key and one boolean per filter of every post of every range),
`picks` (each range's draw) and `chosen` (each chosen post once, with the range it is
written under).
"""

from __future__ import annotations

import duckdb

from kohaku.errors import ConfigError, InputError
from kohaku.sample import subsets
from kohaku.sample.config import RATINGS, TAG_QUERY, FilterConfig, SampleConfig
from kohaku.sample.keys import keyed_sql


def _sql_list(values) -> str:
    return "[" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + "]"


def filter_flags(f: FilterConfig) -> dict[str, str]:
    """One SQL boolean per active filter: true when the post is rejected by it."""
    px, aspect = "image_width * image_height", "image_width / nullif(image_height, 0)"
    flags = {
        "deleted": "is_deleted <> 0" if f.drop_deleted else None,
        "banned": "is_banned <> 0" if f.drop_banned else None,
        "restricted": "coalesce(md5, '') = '' OR coalesce(file_url, '') = ''"
        if f.drop_restricted else None,
        "file_ext": f"NOT list_contains({_sql_list(e.lower() for e in f.image_exts)}, "
        "coalesce(file_ext, ''))",
        "rating": None if len(set(f.ratings)) == len(RATINGS) else
        f"NOT list_contains({[RATINGS.index(r) for r in f.ratings]}, rating)",
        "min_pixels": f"{px} < {f.min_pixels}" if f.min_pixels else None,
        "max_pixels": f"{px} > {f.max_pixels}" if f.max_pixels else None,
        "min_aspect": f"{aspect} < {f.min_aspect}" if f.min_aspect else None,
        "max_aspect": f"{aspect} > {f.max_aspect}" if f.max_aspect else None,
        "min_score": f"score < {f.min_score}" if f.min_score is not None else None,
        "required_tags": "id NOT IN (SELECT post_id FROM has_required)"
        if f.required_tags else None,
        "excluded_tags": "id IN (SELECT post_id FROM has_excluded)" if f.excluded_tags else None,
    }  # fmt: skip
    return {name: f"coalesce({sql}, true)" for name, sql in flags.items() if sql}


def tag_lists(cfg: SampleConfig) -> dict[str, list[str]]:
    """Every tag list of the config by its field path (`filters.required_tags`,
    `ranges.2.any_tags`), given ones only."""
    lists = {f"filters.{f}": getattr(cfg.filters, f) for f in ("required_tags", "excluded_tags")}
    for i, r in enumerate(cfg.ranges):
        lists.update({f"ranges.{i}.{f}": getattr(r, f) for f in TAG_QUERY})
    return {field: names for field, names in lists.items() if names}


def resolve_tags(con: duckdb.DuckDBPyConnection, cfg: SampleConfig) -> dict[str, list[int]]:
    """Tag ids of every tag list, by field path; unknown names in any list are one error
    naming them all (a typo would silently match nothing). Run before reading posts."""
    lists = tag_lists(cfg)
    names = sorted({n for names in lists.values() for n in names})
    if not names:
        return {}
    found = dict(con.execute(
        f"SELECT name, id FROM tag() WHERE name IN (SELECT unnest({_sql_list(names)}))"
    ).fetchall())  # fmt: skip
    unknown = {f: [n for n in ns if n not in found] for f, ns in lists.items()}
    problems = [f"sample.{f}: unknown danbooru tags {ns}" for f, ns in unknown.items() if ns]
    if problems:
        raise ConfigError("; ".join(problems) + " (use the danbooru spelling, with underscores)")
    return {f: [found[n] for n in ns] for f, ns in lists.items()}


def build_tag_filters(con: duckdb.DuckDBPyConnection, tag_ids: dict[str, list[int]]) -> None:
    req = tag_ids.get("filters.required_tags")
    exc = tag_ids.get("filters.excluded_tags")
    if req:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE has_required AS SELECT post_id FROM rel()
            WHERE tag_id IN ({", ".join(map(str, req))})
            GROUP BY post_id HAVING count(DISTINCT tag_id) = {len(set(req))}""")
    if exc:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE has_excluded AS SELECT DISTINCT post_id
            FROM rel() WHERE tag_id IN ({", ".join(map(str, exc))})""")


def build_candidates(
    con: duckdb.DuckDBPyConnection, cfg: SampleConfig, tag_ids: dict[str, list[int]]
) -> list[str]:
    """Create `cand`: one row per (post, range) with the range index, the post's key in
    that range and the filter flags. Plain ranges are disjoint (one row per post, keyed by
    the seed); each subset adds its own rows, keyed by the seed and its name."""
    # names as an ENUM: posts.parquet's `subset` is then written dictionary-encoded, as
    # cheap as no column at all (VARCHAR cost ~20 % of the posts write on 200k posts)
    names = ", ".join("'" + r.key.replace("'", "''") + "'" for r in cfg.ranges)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE ranges (idx INT, start BIGINT, stop BIGINT,
        n BIGINT, name ENUM({names}), repeats INT)""")
    con.executemany("INSERT INTO ranges VALUES (?, ?, ?, ?, ?, ?)", [
        (i, r.start, r.stop, None if r.count == "all" else r.count, r.key, r.repeats)
        for i, r in enumerate(cfg.ranges)
    ])  # fmt: skip
    build_tag_filters(con, tag_ids)
    flags = filter_flags(cfg.filters)
    flag_cols = "".join(f", {sql} AS f_{name}" for name, sql in flags.items())
    parts = [_plain_ranges(cfg)] if any(not r.tagged for r in cfg.ranges) else []
    parts += subsets.keyed_candidates(con, cfg, tag_ids)
    # only keys and flags: the chosen posts' columns are read from post() when written
    con.execute(f"""CREATE OR REPLACE TEMP TABLE cand AS SELECT id, range_idx, sample_key
        {flag_cols} FROM ({" UNION ALL ".join(parts)})""")
    max_id = con.execute("SELECT max(id) FROM post()").fetchone()[0]
    if max_id is not None and max_id > 2**32 - 1:
        raise InputError(f"post ids up to {max_id} exceed 2**32-1; the sampler keys 32-bit ids")
    return list(flags)


def _plain_ranges(cfg: SampleConfig) -> str:
    """SQL: the posts of the plain ranges with their range index and key."""
    # a CASE over the few ranges is much cheaper than a range join over millions of posts
    which = " ".join(f"WHEN id >= {r.start} AND id < {r.stop} THEN {i}"
                     for i, r in enumerate(cfg.ranges) if not r.tagged)  # fmt: skip
    in_ranges = f"SELECT * FROM (SELECT *, CASE {which} END AS range_idx FROM post()) " \
                "WHERE range_idx IS NOT NULL"  # fmt: skip
    return keyed_sql(f"({in_ranges})", "id", cfg.seed)


def _drawn(where: str) -> str:
    """SQL: per range, the `n` posts of `cand` matching `where` with the smallest keys."""
    rank = "row_number() OVER (PARTITION BY range_idx ORDER BY sample_key, id)"
    return f"""SELECT x.id, x.range_idx FROM (SELECT id, range_idx, {rank} AS rn FROM cand
               WHERE {where}) x JOIN ranges r ON r.idx = x.range_idx
               WHERE r.n IS NULL OR x.rn <= r.n"""


def _cand_key(cfg: SampleConfig) -> str:
    """What identifies a row of `cand`: the post, and with subsets also the range (a post
    can be a candidate of several); a two-column join measurably slows the default path."""
    return "id, range_idx" if cfg.has_subsets else "id"


def choose(con: duckdb.DuckDBPyConnection, cfg: SampleConfig, flags: list[str]) -> None:
    """Create `picks(id, range_idx)`, each range's draw from `cand` following
    `cfg.filter_timing` (after_sampling also keeps the drawn posts as `sampled`), and
    `chosen(id, range_idx)`, each post once."""
    rejected = " OR ".join(f"f_{n}" for n in flags) or "false"
    if cfg.filter_timing == "before_sampling":
        con.execute(f"CREATE OR REPLACE TEMP TABLE picks AS {_drawn(f'NOT ({rejected})')}")
    else:
        con.execute(f"CREATE OR REPLACE TEMP TABLE sampled AS {_drawn('true')}")
        con.execute(f"""CREATE OR REPLACE TEMP TABLE picks AS SELECT s.id, s.range_idx
            FROM sampled s JOIN cand c USING ({_cand_key(cfg)}) WHERE NOT ({rejected})""")
    subsets.dedupe(con, cfg.has_subsets)


def range_counts(con: duckdb.DuckDBPyConnection, cfg: SampleConfig, flags: list[str]) -> list[dict]:
    """Per range: its candidates (`in_range`: posts in range matching its tag query),
    rejections per filter (among the posts the filters were applied to), posts passing
    all filters, posts drawn (`chosen`), of those the ones another range drew too
    (`overlap`), posts written under it in posts.parquet (`written`), its repeats and
    images per epoch (chosen x repeats)."""
    rejected = " OR ".join(f"f_{n}" for n in flags) or "false"
    # rejections are counted among the posts the filters were applied to (after_sampling:
    # the drawn ones), like `filtered_pool` and `eligible`
    drawn = "true" if cfg.filter_timing == "before_sampling" else "s.id IS NOT NULL"
    joined = "cand c" if cfg.filter_timing == "before_sampling" else \
        f"cand c LEFT JOIN sampled s USING ({_cand_key(cfg)})"  # fmt: skip
    per_flag = "".join(f", count(*) FILTER (WHERE {drawn} AND f_{n}) AS {n}" for n in flags)
    rows = con.execute(f"""WITH per_range AS (SELECT c.range_idx, count(*) AS in_range,
            count(*) FILTER (WHERE {drawn}) AS filtered_pool {per_flag},
            count(*) FILTER (WHERE {drawn} AND NOT ({rejected})) AS eligible
            FROM {joined} GROUP BY c.range_idx)
        SELECT r.idx, r.n, p.* EXCLUDE (range_idx), h.* EXCLUDE (range_idx)
        FROM ranges r LEFT JOIN per_range p ON p.range_idx = r.idx
        LEFT JOIN ({subsets.pick_counts_sql(cfg.has_subsets)}) h ON h.range_idx = r.idx
        ORDER BY r.idx""")
    names = [d[0] for d in rows.description]
    return [_range_record(cfg, flags, dict(zip(names, row, strict=True)))
            for row in rows.fetchall()]  # fmt: skip


def _range_record(cfg: SampleConfig, flags: list[str], rec: dict) -> dict:
    rng, n = cfg.ranges[rec.pop("idx")], rec.pop("n")
    rec = {k: v or 0 for k, v in rec.items()}  # a range without posts has no group
    return {
        "name": rng.key, "range": rng.label(), "requested": "all" if n is None else n,
        "repeats": rng.repeats, "in_range": rec["in_range"], "filtered_pool": rec["filtered_pool"],
        "rejected_by": {f: rec[f] for f in flags}, "eligible": rec["eligible"],
        "chosen": rec["chosen"], "overlap": rec["overlap"], "written": rec["written"],
        "images_per_epoch": rec["chosen"] * rng.repeats,
    }  # fmt: skip


def check_shortfall(cfg: SampleConfig, counts: list[dict]) -> list[str]:
    """Ranges holding fewer posts than requested: an error, or (take_all) a warning."""
    short = []
    for rng, rec in zip(cfg.ranges, counts, strict=True):
        want = rec["requested"]
        pool = rec["eligible"] if cfg.filter_timing == "before_sampling" else rec["in_range"]
        if want != "all" and pool < want:
            short.append(f"{rng.describe()} holds {pool} posts, fewer than the {want} requested")
    if short and cfg.on_short_range == "error":
        raise ConfigError(
            "; ".join(short) + ": lower the count, or set sample.on_short_range = 'take_all'"
        )
    return short
