"""Subsets: id ranges with a tag query (any / required / excluded tags), drawn on their own.

Reads the views of `kohaku.metadata.source` and the resolved tag ids; writes temp tables
`subset_query` (range, list, tag id), `subset_match` (per subset, its posts having any
tag of its query: one scan of the relation table for all subsets) and `chosen` (each
chosen post once). Each subset's candidates are keyed by the seed and its name
(`keys.subset_seed`), so subsets over the same posts draw independently and adding one
never changes another's draw.

Overlaps: a post drawn by several ranges is written once, under the range with the
largest repeats (the first listed among equals): every range still sees each of its
posts at least `repeats` times per epoch, and none is shown more often than the most
repeated range asks for. Each range's draw (`chosen`) and how much of it other ranges
also drew (`overlap`) are counted in the manifest.
"""

from __future__ import annotations

import duckdb

from kohaku.sample.config import TAG_QUERY, IdRange, SampleConfig
from kohaku.sample.keys import keyed_sql, subset_seed

# which range a post drawn by several is written under (over picks p JOIN ranges r)
WINNER = "PARTITION BY p.id ORDER BY r.repeats DESC, p.range_idx"
PICKS = "picks p JOIN ranges r ON r.idx = p.range_idx"


def keyed_candidates(
    con: duckdb.DuckDBPyConnection, cfg: SampleConfig, tag_ids: dict[str, list[int]]
) -> list[str]:
    """SQL per subset: its candidates (post columns, range_idx, sample_key); none without
    subsets (the plain-range path then runs exactly as before)."""
    tagged = [i for i, r in enumerate(cfg.ranges) if r.tagged]
    if not tagged:
        return []
    _build_matches(con, tagged, tag_ids)
    return [
        keyed_sql(f"({_members(i, cfg.ranges[i])})", "id", subset_seed(cfg.seed, cfg.ranges[i].key))
        for i in tagged
    ]


def _build_matches(
    con: duckdb.DuckDBPyConnection, tagged: list[int], tag_ids: dict[str, list[int]]
) -> None:
    # one VALUES list (integers and field names only): 15x faster than unnesting list
    # parameters (0.05 s against 0.8 s for 330 tags) and one statement for any count
    values = ", ".join(f"({i}, '{field}', {t})" for i in tagged for field in TAG_QUERY
                       for t in tag_ids.get(f"ranges.{i}.{field}", []))  # fmt: skip
    con.execute("""CREATE OR REPLACE TEMP TABLE subset_query
        (range_idx INT, kind VARCHAR, tag_id BIGINT)""")
    con.execute(f"INSERT INTO subset_query VALUES {values}")
    con.execute("""CREATE OR REPLACE TEMP TABLE subset_match AS SELECT q.range_idx, r.post_id,
        count(DISTINCT r.tag_id) FILTER (WHERE q.kind = 'required_tags') AS n_required,
        bool_or(q.kind = 'any_tags') AS has_any,
        bool_or(q.kind = 'excluded_tags') AS has_excluded
        FROM rel() r JOIN subset_query q USING (tag_id) WHERE r.post_id IS NOT NULL
        GROUP BY q.range_idx, r.post_id""")


def _members(i: int, r: IdRange) -> str:
    """SQL: the posts of subset `i` (its id range and tag query), as `post()` rows plus
    `range_idx`: the same columns as the plain ranges' candidates."""
    match = f"SELECT post_id FROM subset_match WHERE range_idx = {i}"
    wanted = [f"n_required = {len(set(r.required_tags))}"] if r.required_tags else []
    wanted += ["has_any"] if r.any_tags else []
    where = [f"id >= {r.start}", f"id < {r.stop}"]
    if wanted:
        where.append(f"id IN ({match} AND {' AND '.join(wanted)})")
    if r.excluded_tags:
        where.append(f"id NOT IN ({match} AND has_excluded)")
    return f"SELECT *, {i} AS range_idx FROM post() WHERE {' AND '.join(where)}"


def dedupe(con: duckdb.DuckDBPyConnection, overlapping: bool) -> None:
    """`chosen`: the posts of `picks`, each once (under the range that wins it)."""
    if not overlapping:  # plain ranges are disjoint: the picks are already unique
        con.execute("CREATE OR REPLACE TEMP VIEW chosen AS SELECT * FROM picks")
        return
    con.execute(f"""CREATE OR REPLACE TEMP TABLE chosen AS SELECT p.id, p.range_idx
        FROM {PICKS} QUALIFY row_number() OVER ({WINNER}) = 1""")


def pick_counts_sql(overlapping: bool) -> str:
    """SQL per range_idx: `chosen` (its draw), `overlap` (of those, posts another range
    drew too) and `written` (those written under it)."""
    if not overlapping:
        return "SELECT range_idx, count(*) AS chosen, 0 AS overlap, count(*) AS written " \
               "FROM picks GROUP BY range_idx"  # fmt: skip
    return f"""SELECT range_idx, count(*) AS chosen, count(*) FILTER (WHERE n > 1) AS overlap,
        count(*) FILTER (WHERE rn = 1) AS written FROM (SELECT p.range_idx,
        count(*) OVER (PARTITION BY p.id) AS n, row_number() OVER ({WINNER}) AS rn
        FROM {PICKS}) GROUP BY range_idx"""


def totals(con: duckdb.DuckDBPyConnection, per_range: list[dict], overlapping: bool) -> dict:
    """Posts written, images per epoch (their repeats summed), posts drawn by several ranges."""
    multi = "SELECT count(*) FROM (SELECT id FROM picks GROUP BY id HAVING count(*) > 1)"
    return {
        "posts": sum(r["written"] for r in per_range),
        "images_per_epoch": sum(r["written"] * r["repeats"] for r in per_range),
        "overlap_posts": con.execute(multi).fetchone()[0] if overlapping else 0,
    }
