"""Hand-made sample-stage outputs (the files the tag stage reads), written with Polars and
finished with a manifest through `kohaku.stage`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from kohaku.stage import Manifest, build_stage, write_manifest

OUTPUTS = {
    "posts": "posts.parquet",
    "post_tags": "post_tags.parquet",
    "tags": "tags.parquet",
    "fav_hist": "fav_hist.parquet",
}


def write_sample_stage(
    run_dir: Path,
    posts: list[dict],
    tags: list[tuple[int, str, int]],
    post_tags: list[tuple[int, int]],
    fav_hist: list[tuple[int, ...]] = (),
    snapshot: str | None = "2024-06-01 00:00:00+00",
) -> Manifest:
    """posts: dicts with id, created_at (ISO string), rating (0..3), fav_count;
    post_tags: (post_id, tag_id) in relation order (ord = position); fav_hist: (rating,
    year, fav_count, n), or (rating, fav_count, n) as the sample stage wrote it before
    issue 14 (no year column)."""
    rows = []
    for p in posts:
        created = datetime.fromisoformat(p["created_at"])
        rows.append(
            {
                "id": p["id"],
                "range_idx": 0,
                "created_at": created.astimezone(UTC),
                "year": created.year,
                "rating": p["rating"],
                "fav_count": p["fav_count"],
            }
        )
    post_schema = {
        "id": pl.Int64,
        "range_idx": pl.Int32,
        "created_at": pl.Datetime("us", "UTC"),
        "year": pl.Int32,
        "rating": pl.Int32,
        "fav_count": pl.Int64,
    }
    rel = [{"post_id": p, "tag_id": t, "ord": k + 1} for k, (p, t) in enumerate(post_tags)]
    rel_frame = pl.DataFrame(rel, schema={"post_id": pl.Int64, "tag_id": pl.Int64, "ord": pl.Int64})
    with build_stage(run_dir, "sample") as build:
        pl.DataFrame(rows, schema=post_schema).sort("id").write_parquet(
            build.dir / OUTPUTS["posts"]
        )
        rel_frame.sort("post_id", "ord").write_parquet(build.dir / OUTPUTS["post_tags"])
        pl.DataFrame(
            [{"id": i, "name": n, "category": c} for i, n, c in tags],
            schema={"id": pl.Int64, "name": pl.String, "category": pl.Int32},
        ).write_parquet(build.dir / OUTPUTS["tags"])
        hist_schema = {"rating": pl.Int32, "year": pl.Int32, "fav_count": pl.Int64, "n": pl.Int64}
        if fav_hist and len(fav_hist[0]) == 3:
            hist_schema.pop("year")
        pl.DataFrame(fav_hist, schema=hist_schema, orient="row").write_parquet(
            build.dir / OUTPUTS["fav_hist"]
        )
        counts = {"posts": len(posts), "metadata_snapshot_at": snapshot}
        return write_manifest(
            build,
            stage_version="1",
            config_hash="handmade",
            inputs={},
            outputs=OUTPUTS,
            counts=counts,
            versions={},
        )
