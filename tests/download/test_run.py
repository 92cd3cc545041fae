"""The download stage over shards: ledgers, manifest, resume after a failure."""

from __future__ import annotations

import os
import subprocess
import sys

import polars as pl
import pytest

from kohaku.download.config import DownloadConfig
from kohaku.download.run import ledger_path, run_download
from kohaku.errors import InputError
from kohaku.fetch import FetchConfig
from kohaku.stage import build_stage, read_manifest, write_manifest
from tests.download.test_shard import FILES, md5
from tests.fetch.server import Server

CFG = DownloadConfig(
    fetch=FetchConfig(allowed_hosts=["127.0.0.1"], retries=0, backoff_base=0.01), threads=2
)


def sample_stage(run_dir, server: Server) -> None:
    posts = [
        (1, "/img/1.jpg", "/img/1.jpg"),
        (2, "/img/2.png", "/img/2.png"),
        (9, "/img/1.jpg", "/later/9.jpg"),
    ]  # (id, bytes the md5 names, URL path)
    rows = [{"id": i, "md5": md5(FILES[f]), "file_ext": f[-3:], "file_url": server.url(u)}
            for i, f, u in posts]  # fmt: skip
    with build_stage(run_dir, "sample") as build:
        pl.DataFrame(rows).write_parquet(build.dir / "posts.parquet")
        write_manifest(build, stage_version="1", config_hash="handmade", inputs={},
                       outputs={"posts": "posts.parquet"}, counts={}, versions={})  # fmt: skip


@pytest.fixture
def server():
    with Server(dict(FILES)) as srv:
        yield srv


def test_shards_ledgers_manifest_and_resume(server, tmp_path):
    sample_stage(tmp_path, server)
    first = run_download(CFG, tmp_path, shard_size=2)
    assert [ledger_path(tmp_path, i).is_file() for i in range(2)] == [True, True]
    assert (first.counts["posts"], first.counts["ok"], first.counts["failed"]) == (3, 2, 1)
    assert "HTTP 404" in next(iter(first.counts["top_errors"]))
    assert read_manifest(tmp_path / "download") == first

    server.files["/later/9.jpg"] = FILES["/img/1.jpg"]  # the missing file appears
    hits = dict(server.hits)
    second = run_download(CFG, tmp_path, shard_size=2)
    assert (second.counts["ok"], second.counts["failed"]) == (3, 0)
    assert server.hits["/img/1.jpg"] == hits["/img/1.jpg"]  # not fetched again
    assert (tmp_path / "download" / "images" / "009" / "9.webp").is_file()


def test_without_sample_stage(tmp_path):
    with pytest.raises(InputError, match="no finished sample stage"):
        run_download(CFG, tmp_path)


def test_temp_files_of_a_killed_run_are_removed_on_resume_and_counted(server, tmp_path):
    sample_stage(tmp_path, server)
    run_download(CFG, tmp_path, shard_size=2)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a writer that is gone, as after kill -9
    stage, dead, alive = tmp_path / "download", proc.pid, os.getpid()
    stale = [stage / f"images/001/.1.webp.0badc0de.tmp-{dead}",
             stage / f"images/009/.9.txt.12345678.tmp-{dead}",
             stage / f"ledgers/.shard-00001.parquet.a1b2c3d4.tmp-{dead}",
             stage / f".manifest.json.deadbeef.tmp-{dead}"]  # fmt: skip
    kept = [stage / f"images/001/.1.webp.0badc0de.tmp-{alive}",  # a running writer's
            stage / f"images/001/.1.webp.not-hex!.tmp-{dead}",  # not kohaku's pattern
            stage / f"images/001/1.webp.0badc0de.tmp-{dead}",  # not hidden
            stage / "images/001/notes.txt", stage / "images/.keep"]  # fmt: skip
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    again = run_download(CFG, tmp_path, shard_size=2)
    assert not [p for p in stale if p.exists()] and all(p.is_file() for p in kept)
    assert again.counts["stale_temp_removed"] == len(stale) == read_manifest(stage).counts[
        "stale_temp_removed"]  # fmt: skip
    assert run_download(CFG, tmp_path, shard_size=2).counts["stale_temp_removed"] == len(stale)
