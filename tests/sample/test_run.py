"""The sample stage as a stage: its output files, manifest, reuse, and bad inputs that
fail with a clear error before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from kohaku.errors import ConfigError, InputError
from kohaku.sample import SAMPLE_VERSION, SampleConfig, run_sample
from kohaku.stage import Manifest, read_manifest
from tests.sample.reference import Metadata, expected_selection, write_metadata

POST_COLUMNS = [
    "id",
    "range_idx",
    "subset",
    "repeats",
    "created_at",
    "year",
    "rating",
    "fav_count",
    "score",
    "md5",
    "file_ext",
    "file_url",
    "file_size",
    "image_width",
    "image_height",
]
RANGES = [{"start": 100, "end": 1600, "count": 500}, {"start": 2000, "count": "all"}]


def config(source: Path, **fields) -> SampleConfig:
    return SampleConfig(**{"source": source, "seed": 11, "ranges": RANGES, **fields})


def stage_leftovers(run_dir: Path) -> list[str]:
    """Anything the sample stage left in the run dir."""
    if not run_dir.exists():
        return []
    return sorted(p.name for p in run_dir.iterdir() if "sample" in p.name)


@pytest.fixture(scope="module")
def built(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest, float]:
    run_dir = tmp_path_factory.mktemp("run")
    t0 = time.time()
    manifest = run_sample(config(synth_db), run_dir)
    return run_dir / "sample", manifest, t0


def read(stage: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(stage / f"{name}.parquet")


def test_posts_columns_order_and_values(built, meta: Metadata) -> None:
    stage, _, _ = built
    posts = read(stage, "posts")
    assert posts.columns == POST_COLUMNS
    assert posts["id"].is_sorted() and posts["id"].is_unique().all()
    assert posts["range_idx"].to_list() == [0 if i < 1600 else 1 for i in posts["id"]]
    # plain ranges: named by their id range, shown once per epoch
    assert posts["subset"].to_list() == ["[100, 1600)" if i < 1600 else "[2000, end)"
                                         for i in posts["id"]]  # fmt: skip
    assert set(posts["repeats"]) == {1}
    index = {int(i): k for k, i in enumerate(meta.ids)}
    for row in posts.iter_rows(named=True):
        k = index[row["id"]]
        for col in (
            "fav_count",
            "score",
            "md5",
            "file_ext",
            "file_url",
            "file_size",
            "image_width",
            "image_height",
            "rating",
        ):
            assert row[col] == meta.posts[col][k], col
        stamp = meta.posts["created_at"][k]
        assert row["year"] == int(stamp[:4])  # the upload year as danbooru shows it
        assert row["created_at"] == datetime.fromisoformat(stamp)


def test_post_tags_are_the_relations_of_chosen_posts(built, meta: Metadata) -> None:
    stage, _, _ = built
    posts, post_tags = read(stage, "posts"), read(stage, "post_tags")
    assert post_tags.columns == ["post_id", "tag_id", "ord"]
    chosen = set(posts["id"])
    expected = sorted((post, tag, rid) for rid, post, tag in meta.relations if post in chosen)
    assert sorted(post_tags.rows()) == expected
    assert post_tags.rows() == sorted(post_tags.rows(), key=lambda r: (r[0], r[2]))
    assert set(post_tags["post_id"]) == chosen  # every synthetic post has tags


def test_tag_dictionary_covers_the_used_tags(built, meta: Metadata) -> None:
    stage, _, _ = built
    tags, post_tags = read(stage, "tags"), read(stage, "post_tags")
    assert tags.columns == ["id", "name", "category"]
    assert tags["id"].to_list() == sorted(set(post_tags["tag_id"]))
    for tid, name, category in tags.rows():
        assert meta.tags[tid] == (name, category)


def test_fav_hist_covers_the_whole_metadata(built, meta: Metadata) -> None:
    stage, _, _ = built
    hist = read(stage, "fav_hist")
    assert hist.columns == ["rating", "year", "fav_count", "n"]  # year: issue 14
    assert hist["n"].sum() == len(meta.ids) == 3000
    years = [int(s[:4]) for s in meta.posts["created_at"]]
    expected = Counter(
        zip(meta.posts["rating"].tolist(), years, meta.posts["fav_count"].tolist(), strict=True)
    )
    assert {(r, y, f): n for r, y, f, n in hist.rows()} == dict(expected)
    assert hist.rows() == sorted(hist.rows())


def test_manifest(built, synth_db: Path, meta: Metadata) -> None:
    stage, manifest, t0 = built
    assert read_manifest(stage) == manifest
    on_disk = json.loads((stage / "manifest.json").read_text())
    assert on_disk["stage"] == "sample" and on_disk["stage_version"] == SAMPLE_VERSION
    cfg = config(synth_db)
    assert manifest.config_hash == hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]
    source = manifest.inputs["source"]
    assert manifest.inputs["source_format"] == "sqlite"
    assert source["path"] == str(synth_db)
    assert source["size"] == synth_db.stat().st_size
    assert source["mtime_ns"] == synth_db.stat().st_mtime_ns
    assert source["sha256"] is None  # large files: size and mtime only (a 30 GB DB is not hashed)
    assert manifest.outputs == {
        "posts": "posts.parquet",
        "post_tags": "post_tags.parquet",
        "tags": "tags.parquet",
        "fav_hist": "fav_hist.parquet",
    }
    assert sorted(p.name for p in stage.iterdir()) == sorted(
        [*manifest.outputs.values(), "manifest.json"]
    )
    counts = manifest.counts
    assert counts["posts"] == read(stage, "posts").height
    assert counts["posts"] == sum(r["chosen"] for r in counts["ranges"])
    assert [r["chosen"] for r in counts["ranges"]] == [
        read(stage, "posts").filter(pl.col("range_idx") == i).height for i in range(2)
    ]
    assert counts["ranges"][0]["chosen"] == 500 and counts["short_ranges"] == []
    newest = max(datetime.fromisoformat(s) for s in meta.posts["created_at"])
    assert datetime.fromisoformat(counts["metadata_snapshot_at"]) == newest
    assert manifest.versions["duckdb"] == duckdb.__version__
    assert {"python", "kohaku"} <= set(manifest.versions)
    steps = {"open", "select", "write_posts", "write_post_tags", "write_tags", "write_fav_hist"}
    assert set(manifest.timings) == steps | {"total"}
    assert all(v >= 0 for v in manifest.timings.values())
    assert manifest.timings["total"] >= max(manifest.timings[s] for s in steps)
    assert t0 <= manifest.created_at <= time.time()


def test_rerun_reuses_and_a_changed_input_rebuilds(synth_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    shutil.copy(synth_db, db)
    run_dir = tmp_path / "run"
    first = run_sample(config(db), run_dir)
    posts_mtime = (run_dir / "sample" / "posts.parquet").stat().st_mtime_ns
    again = run_sample(config(db), run_dir, threads=1)
    assert again == first
    assert read_manifest(run_dir / "sample").created_at == first.created_at
    assert (run_dir / "sample" / "posts.parquet").stat().st_mtime_ns == posts_mtime

    con = sqlite3.connect(db)  # the metadata changes: the stage is rebuilt
    with con:
        con.execute("UPDATE post SET fav_count = fav_count + 1")
    con.close()
    rebuilt = run_sample(config(db), run_dir)
    assert rebuilt.created_at > first.created_at
    assert rebuilt.config_hash == first.config_hash
    assert rebuilt.inputs["source"]["mtime_ns"] != first.inputs["source"]["mtime_ns"]
    hist = read(run_dir / "sample", "fav_hist")
    assert hist["fav_count"].min() >= 1
    assert stage_leftovers(run_dir) == ["sample"]


def test_changed_config_rebuilds(synth_parquet: Path, tmp_path: Path) -> None:
    first = run_sample(config(synth_parquet), tmp_path)
    reseeded = run_sample(config(synth_parquet, seed=12), tmp_path)
    assert reseeded.created_at > first.created_at
    assert reseeded.config_hash != first.config_hash
    assert read_manifest(tmp_path / "sample") == reseeded
    jpg_only = config(synth_parquet, seed=12, filters={"image_exts": ["jpg"]})
    filtered = run_sample(jpg_only, tmp_path)
    assert filtered.config_hash not in (first.config_hash, reseeded.config_hash)
    assert set(read(tmp_path / "sample", "posts")["file_ext"]) == {"jpg"}
    assert run_sample(jpg_only, tmp_path) == filtered


def test_rerun_rebuilds_a_stage_without_manifest(synth_parquet: Path, tmp_path: Path) -> None:
    first = run_sample(config(synth_parquet), tmp_path)
    (tmp_path / "sample" / "manifest.json").unlink()  # an unfinished stage
    second = run_sample(config(synth_parquet), tmp_path)
    assert second.created_at > first.created_at
    assert read_manifest(tmp_path / "sample") == second


# --- bad input: a clear error, nothing written ---------------------------------------------


def sqlite_db(path: Path, tables: dict[str, list[str]]) -> Path:
    con = sqlite3.connect(path)
    for table, columns in tables.items():
        con.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
    con.commit()
    con.close()
    return path


POST = [
    "id INTEGER PRIMARY KEY",
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
]
TAG = ["id INTEGER PRIMARY KEY", "name", "type", "popularity"]
REL = ["id INTEGER PRIMARY KEY", "post_id", "tag_id"]


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"sample.source .*nope.db does not exist.*SQLite file"):
        run_sample(config(tmp_path / "nope.db"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_source_file_not_sqlite(tmp_path: Path) -> None:
    bogus = tmp_path / "meta.db"
    bogus.write_text("id,name\n1,x\n")
    with pytest.raises(InputError, match=r"meta.db is a file but not a SQLite database"):
        run_sample(config(bogus), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_source_forced_sqlite_but_garbage(tmp_path: Path) -> None:
    bogus = tmp_path / "meta.db"
    bogus.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(InputError, match="meta.db"):
        run_sample(config(bogus, source_format="sqlite"), tmp_path / "run")
    assert stage_leftovers(tmp_path / "run") == []


@pytest.mark.parametrize("missing", ["tag", "posttagrelation"])
def test_sqlite_without_a_table(tmp_path: Path, missing: str) -> None:
    tables = {"post": POST, "tag": TAG, "posttagrelation": REL}
    del tables[missing]
    db = sqlite_db(tmp_path / "meta.db", tables)
    with pytest.raises(InputError, match=f"no readable table '{missing}'.*danbooru2023"):
        run_sample(config(db), tmp_path / "run")
    assert stage_leftovers(tmp_path / "run") == []


@pytest.mark.parametrize("table, column", [("post", "fav_count"), ("tag", "type")])
def test_sqlite_table_lacking_a_column(tmp_path: Path, table: str, column: str) -> None:
    tables = {"post": POST, "tag": TAG, "posttagrelation": REL}
    tables[table] = [c for c in tables[table] if c != column]
    db = sqlite_db(tmp_path / "meta.db", tables)
    with pytest.raises(InputError, match=rf"table '{table}' lacks columns \['{column}'\]"):
        run_sample(config(db), tmp_path / "run")
    assert stage_leftovers(tmp_path / "run") == []


def test_post_ids_beyond_32_bits(tmp_path: Path) -> None:
    source = write_metadata(tmp_path / "meta", [{"id": 5}, {"id": 2**32}])
    with pytest.raises(InputError, match="exceed 2\\*\\*32-1"):
        run_sample(SampleConfig(source=source), tmp_path / "run")
    assert stage_leftovers(tmp_path / "run") == []


def range_sizes(meta: Metadata, start: int, end: int) -> tuple[int, int]:
    """Posts in [start, end) and those of them passing the default filters (reference)."""
    cfg = SampleConfig(source=Path("x"), ranges=[{"start": start, "end": end}])
    res = expected_selection(meta, cfg)[0]
    return res.in_range, len(res.chosen)


def test_count_larger_than_the_range_holds(
    synth_parquet: Path, meta: Metadata, tmp_path: Path
) -> None:
    in_range, eligible = range_sizes(meta, 0, 200)
    want = eligible + 1  # fewer eligible posts than asked, though the range holds enough
    assert want <= in_range
    ranges = [{"start": 0, "end": 200, "count": want}, {"start": 200, "end": 3000, "count": 100}]
    with pytest.raises(
        ConfigError,
        match=rf"range \[0, 200\) holds {eligible} posts, fewer than "
        rf"the {want}.*on_short_range = 'take_all'",
    ):
        run_sample(config(synth_parquet, ranges=ranges), tmp_path / "run")
    assert stage_leftovers(tmp_path / "run") == []

    manifest = run_sample(
        config(synth_parquet, ranges=ranges, on_short_range="take_all"), tmp_path / "run"
    )
    first = manifest.counts["ranges"][0]
    assert first["eligible"] == first["chosen"] == eligible
    assert manifest.counts["short_ranges"] == [
        f"range [0, 200) holds {eligible} posts, fewer than the {want} requested"
    ]
    assert manifest.counts["ranges"][1]["chosen"] == 100
    posts = read(tmp_path / "run" / "sample", "posts")
    assert posts.filter(pl.col("range_idx") == 0).height == eligible


def test_count_larger_than_the_range_after_sampling(
    synth_parquet: Path, meta: Metadata, tmp_path: Path
) -> None:
    """after_sampling counts the posts of the range, not those passing the filters."""
    in_range, eligible = range_sizes(meta, 0, 200)
    cfg = config(
        synth_parquet,
        ranges=[{"start": 0, "end": 200, "count": in_range}],
        filter_timing="after_sampling",
    )
    manifest = run_sample(cfg, tmp_path / "ok")
    assert manifest.counts["ranges"][0]["chosen"] == eligible
    assert manifest.counts["short_ranges"] == []
    cfg = config(
        synth_parquet,
        ranges=[{"start": 0, "end": 200, "count": in_range + 1}],
        filter_timing="after_sampling",
    )
    with pytest.raises(ConfigError, match=f"holds {in_range} posts, fewer than the {in_range + 1}"):
        run_sample(cfg, tmp_path / "short")


def test_empty_selection(synth_parquet: Path, meta: Metadata, tmp_path: Path) -> None:
    ids = sorted(int(i) for i in meta.ids)
    lo = ids[0]
    explicit = {int(i) for i, r in zip(meta.ids, meta.posts["rating"], strict=True) if r == 3}
    hi = next(i for i in ids if i in explicit)  # [lo, hi) holds no explicit post
    cfg = config(
        synth_parquet, ranges=[{"start": lo, "end": hi}], filters={"ratings": ["explicit"]}
    )
    with pytest.raises(ConfigError, match="selection .* is empty.*sample.filters"):
        run_sample(cfg, tmp_path / "run")
    assert stage_leftovers(tmp_path / "run") == []


@pytest.mark.parametrize("field", ["required_tags", "excluded_tags"])
def test_unknown_tag(synth_parquet: Path, tmp_path: Path, field: str) -> None:
    cfg = config(synth_parquet, filters={field: ["long_hair", "long hair", "1gril"]})
    with pytest.raises(
        ConfigError,
        match=rf"sample.filters.{field}: unknown danbooru tags "
        r"\['long hair', '1gril'\].*underscores",
    ):
        run_sample(cfg, tmp_path / "run")
    assert stage_leftovers(tmp_path / "run") == []


@pytest.mark.parametrize(
    "fields",
    [
        {"ranges": [{"start": 0, "end": 10}, {"start": 5}]},
        {"ranges": [{"start": 10, "end": 10}]},
        {"ranges": [{"start": 0, "count": 0}]},
        {"filters": {"min_pixels": 10, "max_pixels": 9}},
        {"filterz": {}},
    ],
)
def test_invalid_config_fails_before_running(synth_parquet: Path, fields: dict) -> None:
    with pytest.raises(ValidationError):
        SampleConfig(source=synth_parquet, **fields)


def test_failed_rerun_keeps_the_previous_output(built, synth_db: Path, tmp_path: Path) -> None:
    shutil.copytree(built[0], tmp_path / "sample")
    good = read_manifest(tmp_path / "sample")
    before = {p.name: p.read_bytes() for p in (tmp_path / "sample").iterdir()}
    bad = config(synth_db, filters={"required_tags": ["no_such_tag_anywhere"]})
    with pytest.raises(ConfigError, match="no_such_tag_anywhere"):
        run_sample(bad, tmp_path)  # fails after the source was opened
    assert stage_leftovers(tmp_path) == ["sample"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "sample").iterdir()} == before
    assert read_manifest(tmp_path / "sample") == good
    assert run_sample(config(synth_db), tmp_path) == good  # still reused


def test_stale_partial_dir_of_a_killed_run_is_harmless(synth_parquet: Path, tmp_path: Path) -> None:
    """A run killed with SIGKILL leaves `.sample.partial-<pid>`; `sample/` is never half
    written, and a later run builds it whole."""
    stale = tmp_path / f".sample.partial-{os.getpid()}"
    stale.mkdir(parents=True)
    (stale / "posts.parquet").write_bytes(b"half a file")
    manifest = run_sample(config(synth_parquet), tmp_path)
    assert stage_leftovers(tmp_path) == ["sample"]
    assert read(tmp_path / "sample", "posts").height == manifest.counts["posts"]


def test_partial_dirs_of_dead_processes_are_removed(synth_parquet: Path, tmp_path: Path) -> None:
    """A killed run's `.sample.partial-<pid>` goes away on the next run; the partial dir
    of a live process (another run in progress) is left alone."""
    dead = _exited_pid()
    stale = tmp_path / f".sample.partial-{dead}"
    live = tmp_path / f".sample.partial-{os.getppid()}"
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "posts.parquet").write_bytes(b"half a file")
    run_sample(config(synth_parquet), tmp_path)
    assert not stale.exists()
    assert live.exists()


def _exited_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("source", ["sqlite", "export", "shuffled_parquet"])
def test_post_tags_sorted_whatever_the_source_order(
    source: str, synth_db: Path, synth_parquet: Path, tmp_path: Path, caplog
) -> None:
    """SQLite: sorted by DuckDB. A `kohaku export-parquet` folder is in (post_id, ord)
    order: the order-keeping filter needs no sort. A shuffled parquet export is not: the
    check catches it and the rows get sorted. All give the same sorted rows."""
    from kohaku.metadata.export import export_parquet

    path = {"sqlite": synth_db, "shuffled_parquet": synth_parquet}.get(source)
    if source == "export":
        path = tmp_path / "export"
        export_parquet(synth_db, path)
    with caplog.at_level("INFO", logger="kohaku.sample.run"):
        run_sample(config(path), tmp_path)
    assert ("not in post order" in caplog.text) == (source == "shuffled_parquet")
    rows = read(tmp_path / "sample", "post_tags")
    assert rows.rows() == sorted(rows.rows(), key=lambda r: (r[0], r[2]))
    reference = tmp_path / "reference"
    run_sample(config(synth_db), reference)
    assert rows.equals(read(reference / "sample", "post_tags"))
