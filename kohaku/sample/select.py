"""Seeded selection SQL: candidates per id range, filter flags, ranks by sample key.

Reads the views defined by `kohaku.sample.source`; writes temp tables `ranges`,
`cand` (id, range, sample key and one boolean per filter of every post of every range)
and `chosen`.
"""

from __future__ import annotations

import duckdb

from kohaku.errors import ConfigError, InputError
from kohaku.sample.config import RATINGS, FilterConfig, SampleConfig
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


def resolve_tags(con: duckdb.DuckDBPyConnection, names: list[str], field: str) -> list[int]:
    """Tag ids of `names`; an unknown name is an error (a typo would silently match nothing)."""
    if not names:
        return []
    rows = con.execute(
        f"SELECT name, id FROM tag() WHERE name IN (SELECT unnest({_sql_list(names)}))"
    ).fetchall()
    found = dict(rows)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ConfigError(
            f"sample.filters.{field}: unknown danbooru tags {unknown} "
            "(use the danbooru spelling, with underscores)"
        )
    return [found[n] for n in names]


def build_tag_filters(con: duckdb.DuckDBPyConnection, f: FilterConfig) -> None:
    req = resolve_tags(con, f.required_tags, "required_tags")
    exc = resolve_tags(con, f.excluded_tags, "excluded_tags")
    if req:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE has_required AS SELECT post_id FROM rel()
            WHERE tag_id IN ({", ".join(map(str, req))})
            GROUP BY post_id HAVING count(DISTINCT tag_id) = {len(set(req))}""")
    if exc:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE has_excluded AS SELECT DISTINCT post_id
            FROM rel() WHERE tag_id IN ({", ".join(map(str, exc))})""")


def build_candidates(con: duckdb.DuckDBPyConnection, cfg: SampleConfig) -> list[str]:
    """Create `cand`: posts of all ranges with their range index, key and filter flags."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ranges (idx INT, start BIGINT, stop BIGINT, n BIGINT)"
    )
    con.executemany("INSERT INTO ranges VALUES (?, ?, ?, ?)", [
        (i, r.start, r.stop, None if r.count == "all" else r.count)
        for i, r in enumerate(cfg.ranges)
    ])  # fmt: skip
    build_tag_filters(con, cfg.filters)
    flags = filter_flags(cfg.filters)
    flag_cols = "".join(f", {sql} AS f_{name}" for name, sql in flags.items())
    # a CASE over the few ranges is much cheaper than a range join over millions of posts
    which = " ".join(f"WHEN id >= {r.start} AND id < {r.stop} THEN {i}"
                     for i, r in enumerate(cfg.ranges))  # fmt: skip
    in_ranges = f"SELECT * FROM (SELECT *, CASE {which} END AS range_idx FROM post()) " \
                "WHERE range_idx IS NOT NULL"  # fmt: skip
    # only keys and flags: the chosen posts' columns are read from post() when written
    con.execute(f"""CREATE OR REPLACE TEMP TABLE cand AS SELECT id, range_idx, sample_key
        {flag_cols} FROM ({keyed_sql(f"({in_ranges})", "id", cfg.seed)})""")
    max_id = con.execute("SELECT max(id) FROM post()").fetchone()[0]
    if max_id is not None and max_id > 2**32 - 1:
        raise InputError(f"post ids up to {max_id} exceed 2**32-1; the sampler keys 32-bit ids")
    return list(flags)


def _drawn(where: str) -> str:
    """SQL: per range, the `n` posts of `cand` matching `where` with the smallest keys."""
    rank = "row_number() OVER (PARTITION BY range_idx ORDER BY sample_key, id)"
    return f"""SELECT x.id, x.range_idx FROM (SELECT id, range_idx, {rank} AS rn FROM cand
               WHERE {where}) x JOIN ranges r ON r.idx = x.range_idx
               WHERE r.n IS NULL OR x.rn <= r.n"""


def choose(con: duckdb.DuckDBPyConnection, cfg: SampleConfig, flags: list[str]) -> None:
    """Create `chosen(id, range_idx)` from `cand` following `cfg.filter_timing`
    (after_sampling also keeps the drawn posts as `sampled`)."""
    rejected = " OR ".join(f"f_{n}" for n in flags) or "false"
    if cfg.filter_timing == "before_sampling":
        con.execute(f"CREATE OR REPLACE TEMP TABLE chosen AS {_drawn(f'NOT ({rejected})')}")
        return
    con.execute(f"CREATE OR REPLACE TEMP TABLE sampled AS {_drawn('true')}")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE chosen AS SELECT s.id, s.range_idx
        FROM sampled s JOIN cand c USING (id) WHERE NOT ({rejected})""")


def range_counts(con: duckdb.DuckDBPyConnection, cfg: SampleConfig, flags: list[str]) -> list[dict]:
    """Per range: posts in range, rejections per filter (among the posts the filters
    were applied to), posts passing all filters, posts chosen."""
    rejected = " OR ".join(f"f_{n}" for n in flags) or "false"
    # rejections are counted among the posts the filters were applied to (after_sampling:
    # the drawn ones), like `filtered_pool` and `eligible`
    drawn = "true" if cfg.filter_timing == "before_sampling" else "s.id IS NOT NULL"
    joined = "cand c" if cfg.filter_timing == "before_sampling" else \
        "cand c LEFT JOIN sampled s USING (id)"  # fmt: skip
    per_flag = "".join(f", count(*) FILTER (WHERE {drawn} AND f_{n}) AS {n}" for n in flags)
    rows = con.execute(f"""WITH per_range AS (SELECT c.range_idx, count(*) AS in_range,
            count(*) FILTER (WHERE {drawn}) AS filtered_pool {per_flag},
            count(*) FILTER (WHERE {drawn} AND NOT ({rejected})) AS eligible
            FROM {joined} GROUP BY c.range_idx),
        per_chosen AS (SELECT range_idx, count(*) AS chosen FROM chosen GROUP BY range_idx)
        SELECT r.idx, r.n, p.* EXCLUDE (range_idx), coalesce(h.chosen, 0) AS chosen
        FROM ranges r LEFT JOIN per_range p ON p.range_idx = r.idx
        LEFT JOIN per_chosen h ON h.range_idx = r.idx ORDER BY r.idx""")
    names = [d[0] for d in rows.description]
    out = []
    for row in rows.fetchall():
        rec = dict(zip(names, row, strict=True))
        idx, n = rec.pop("idx"), rec.pop("n")
        rec = {k: v or 0 for k, v in rec.items()}  # a range without posts has no group
        rec["range"] = cfg.ranges[idx].label()
        rec["requested"] = "all" if n is None else n
        rec["rejected_by"] = {f: rec.pop(f) for f in flags}
        out.append(rec)
    return out


def check_shortfall(cfg: SampleConfig, counts: list[dict]) -> list[str]:
    """Ranges holding fewer posts than requested: an error, or (take_all) a warning."""
    short = []
    for rec in counts:
        want = rec["requested"]
        pool = rec["eligible"] if cfg.filter_timing == "before_sampling" else rec["in_range"]
        if want != "all" and pool < want:
            short.append(
                f"range {rec['range']} holds {pool} posts, fewer than the {want} requested"
            )
    if short and cfg.on_short_range == "error":
        raise ConfigError(
            "; ".join(short) + ": lower the count, or set sample.on_short_range = 'take_all'"
        )
    return short
