"""A download killed mid-shard (SIGKILL) and rerun ends with the same ledgers and files
as an uninterrupted run."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from PIL import Image

from kohaku.stage import build_stage, write_manifest
from tests.download.test_shard import md5
from tests.fetch.server import Server

N = 30


def image(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300 + 7 * i, 400), (i * 8 % 256, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


FILES = {f"/img/{i}.png": image(i) for i in range(1, N + 1)}


def prepare(run_dir: Path, server: Server) -> Path:
    rows = [{"id": i, "md5": md5(FILES[f"/img/{i}.png"]), "file_ext": "png",
             "file_url": server.url(f"/img/{i}.png")} for i in range(1, N + 1)]  # fmt: skip
    with build_stage(run_dir, "sample") as build:
        pl.DataFrame(rows).write_parquet(build.dir / "posts.parquet")
        write_manifest(build, stage_version="1", config_hash="handmade", inputs={},
                       outputs={"posts": "posts.parquet"}, counts={}, versions={})  # fmt: skip
    config = run_dir / "run.toml"
    config.write_text(f"""run_dir = "{run_dir}"
[sample]
source = "{run_dir}"
[download]
threads = 2
[download.fetch]
allowed_hosts = ["127.0.0.1"]
per_host_rate = 12.0
""")
    return config


def download(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kohaku.cli", "download", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def snapshot(run_dir: Path) -> tuple[pl.DataFrame, dict[str, bytes]]:
    ledgers = pl.read_parquet(run_dir / "download" / "ledgers" / "*.parquet")
    images = sorted((run_dir / "download" / "images").rglob("*"))
    files = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in images if p.is_file()}
    return ledgers.sort("id"), files


def test_killed_download_resumes_to_the_same_result(tmp_path):
    with Server(dict(FILES)) as server:
        whole, killed = tmp_path / "whole", tmp_path / "killed"
        assert download(prepare(whole, server)).wait(timeout=60) == 0

        fetched_whole = server.hits.total()
        proc = download(prepare(killed, server))
        images = killed / "download" / "images"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(images.rglob("*.webp"))) < 5:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / "download" / "manifest.json").exists()  # killed mid-run
        assert 5 <= len(list(images.rglob("*.webp"))) < N
        debris = [p for p in killed.rglob("*") if ".tmp-" in p.name]  # files cut mid-write

        assert download(prepare(killed, server)).wait(timeout=60) == 0
        refetched = server.hits.total() - 2 * fetched_whole
    # the journal keeps what the killed run finished: only posts in flight then (at most
    # one being fetched and one finished but not yet journaled per thread) come again
    assert 0 <= refetched <= 4
    ledger_a, files_a = snapshot(whole)
    ledger_b, files_b = snapshot(killed)
    assert ledger_a.equals(ledger_b)
    assert (ledger_b["status"] == "ok").all() and ledger_b.height == N
    assert files_a == files_b
    assert not [p for p in killed.rglob("*") if ".tmp-" in p.name]
    manifest = json.loads((killed / "download" / "manifest.json").read_text())
    assert manifest["counts"]["stale_temp_removed"] == len(debris)  # removed on resume
