"""The metadata store: import, snapshots, and the sample stage reading a snapshot."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kohaku.errors import ConfigError, InputError
from kohaku.metadata import snapshot
from kohaku.metadata.store import import_metadata
from kohaku.sample import SampleConfig, run_sample

OUTPUTS = ("posts", "post_tags", "tags", "fav_hist")


def sample_config(source: Path, **fields) -> SampleConfig:
    return SampleConfig(source=source, seed=5,
                        ranges=[{"start": 0, "end": 1500, "count": 400}, {"start": 1500}],
                        **fields)  # fmt: skip


@pytest.fixture(scope="module")
def store(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "meta"
    import_metadata(synth_db, path, partition_ids=500, tag_partition_ids=20_000)
    return path


def test_import_partitions_by_id_range(store: Path, synth_db: Path) -> None:
    snap = snapshot.read_snapshot(store)
    assert snapshot.latest_id(store) == snap.id and snap.parent is None
    assert snap.posts == 3000 and [p.lo for p in snap.tables["post"]] == list(range(0, 3500, 500))
    for part in snap.tables["post"]:
        ids = pl.read_parquet(store / part.file)["id"]
        assert ids.is_sorted() and ids.min() >= part.lo and ids.max() < part.lo + 500
    rel = pl.read_parquet(snap.files(store, "posttagrelation"))
    assert rel.height == 90_273 and rel.select(pl.col("id").n_unique()).item() == rel.height
    assert {p.lo for p in snap.tables["tag"]} == {0, 20_000, 40_000, 60_000}


def test_sample_from_store_equals_sample_from_sqlite(store: Path, synth_db: Path, tmp_path: Path):
    a = run_sample(sample_config(store), tmp_path / "store")
    run_sample(sample_config(synth_db), tmp_path / "sqlite")
    assert a.inputs == {"source": str(store), "source_format": "store",
                        "snapshot": snapshot.latest_id(store)}  # fmt: skip
    for name in OUTPUTS:
        left = pl.read_parquet(tmp_path / "store" / "sample" / f"{name}.parquet")
        assert left.equals(pl.read_parquet(tmp_path / "sqlite" / "sample" / f"{name}.parquet"))


def test_named_and_unknown_snapshots(store: Path, tmp_path: Path) -> None:
    sid = snapshot.latest_id(store)
    manifest = run_sample(sample_config(store, snapshot=sid), tmp_path / "run")
    assert manifest.inputs["snapshot"] == sid
    with pytest.raises(InputError, match="no snapshot '20200101-000000000000'"):
        run_sample(sample_config(store, snapshot="20200101-000000000000"), tmp_path / "x")


def test_a_snapshot_needs_a_store(synth_db: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs a metadata store"):
        run_sample(sample_config(synth_db, snapshot="20200101-000000000000"), tmp_path / "x")


def test_import_refuses_a_store_with_snapshots(store: Path, synth_db: Path) -> None:
    with pytest.raises(ConfigError, match="already has snapshots"):
        import_metadata(synth_db, store, partition_ids=500, tag_partition_ids=20_000)


def test_import_of_api_pages_and_parquet_gives_the_same_store(
    store: Path, synth_db: Path, tmp_path: Path
) -> None:
    from kohaku.demo.api_pages import write_api_pages
    from kohaku.metadata.export import export_parquet

    write_api_pages(synth_db, tmp_path / "pages")
    export_parquet(synth_db, tmp_path / "parquet")
    mine = snapshot.read_snapshot(store)
    for source in ("pages", "parquet"):
        other = import_metadata(tmp_path / source, tmp_path / f"s-{source}", partition_ids=500,
                                tag_partition_ids=20_000)  # fmt: skip
        posts = pl.read_parquet(other.files(tmp_path / f"s-{source}", "post"))
        assert posts.equals(pl.read_parquet(mine.files(store, "post")))
    # the parquet export keeps the tag ids, so it is the same store file for file (the JSON
    # pages carry no tag ids: they are numbered by name there)
    assert other.id[9:] == mine.id[9:] and other.tables == mine.tables


def test_cli_import_and_snapshots(synth_db: Path, tmp_path: Path, capsys) -> None:
    from kohaku.cli import main

    main(["metadata", "import", "--source", str(synth_db), "--store", str(tmp_path / "s"),
          "--partition-ids", "1000"])  # fmt: skip
    sid = snapshot.latest_id(tmp_path / "s")
    assert f"snapshot {sid}: 3000 posts, 4 post partitions" in capsys.readouterr().out
    main(["metadata", "snapshots", "--store", str(tmp_path / "s")])
    assert capsys.readouterr().out.strip() == f"{sid}  (latest)"
