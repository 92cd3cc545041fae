"""The `kohaku` command line, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl


def kohaku(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kohaku.cli", *args], cwd=cwd,
                          capture_output=True, text=True)  # fmt: skip


def test_build_dataset_from_a_config_file(synth_db: Path, tmp_path: Path):
    (tmp_path / "run.toml").write_text(f"""
preset = "delta"
run_dir = "run"
[sample]
source = "{synth_db}"
""")
    out = kohaku("build-dataset", "-c", "run.toml", "--set", "sample.seed=4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "run" / "tag" / "manifest.json").read_text())
    captions = pl.read_parquet(tmp_path / "run" / "tag" / "captions.parquet")
    assert manifest["counts"]["captions"] == captions.height > 0
    assert "tag: done" in out.stdout

    again = kohaku("sample", "-c", "run.toml", "--set", "sample.seed=4", cwd=tmp_path)
    assert "up to date" in again.stderr


def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path):
    (tmp_path / "run.toml").write_text('[sample]\nsource = "nowhere.db"\n')
    out = kohaku("sample", "-c", "run.toml", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("kohaku: error: sample.source")
    assert "does not exist" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_synth_command_writes_a_database(tmp_path: Path):
    out = kohaku("synth", "--posts", "200", "--out", "db.sqlite", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "db.sqlite").is_file()
    again = kohaku("synth", "--posts", "200", "--out", "db.sqlite", cwd=tmp_path)
    assert again.returncode == 2 and "overwrite" in again.stderr


def test_export_parquet_then_sample_gives_the_same_posts(synth_db: Path, tmp_path: Path):
    out = kohaku("export-parquet", "--source", str(synth_db), "--out", "meta", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "meta").iterdir()} == {
        "post.parquet", "tag.parquet", "posttagrelation.parquet", "export.json"}  # fmt: skip
    for source, run in ((synth_db, "a"), (tmp_path / "meta", "b")):
        res = kohaku("build-dataset", "--preset", "epsilon", "--set", f'sample.source="{source}"',
                     "--run-dir", str(tmp_path / run), cwd=tmp_path)  # fmt: skip
        assert res.returncode == 0, res.stderr
    a = pl.read_parquet(tmp_path / "a" / "tag" / "captions.parquet")
    b = pl.read_parquet(tmp_path / "b" / "tag" / "captions.parquet")
    assert a.equals(b)
    again = kohaku("export-parquet", "--source", str(synth_db), "--out", "meta", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
