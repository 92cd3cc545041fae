"""A sync killed (SIGKILL) while fetching and again while merging resumes from its journal to
the same snapshot as an uninterrupted sync; until then the previous snapshot stays latest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kohaku.metadata import snapshot
from kohaku.metadata.sync import sync_metadata
from tests.metadata.conftest import sync_config
from tests.metadata.fake_danbooru import FakeDanbooru

ROOT = Path(__file__).resolve().parents[2]


def start_sync(store: Path, url: str, tmp: Path, rate: float) -> subprocess.Popen:
    """`kohaku metadata sync` in a child process, with its config in a TOML file."""
    toml = tmp / f"sync-{time.monotonic_ns()}.toml"
    toml.write_text(f'store = {json.dumps(str(store))}\napi_url = "{url}"\npage_limit = 100\n'
                    f'recent_window = 300\n[fetch]\nallowed_hosts = ["127.0.0.1"]\n'
                    f"per_host_rate = {rate}\n")  # fmt: skip
    cmd = [sys.executable, "-m", "kohaku.cli", "metadata", "sync", "--config", str(toml)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.kill()
    proc.wait()


def test_killed_sync_resumes_to_the_same_snapshot(store: Path, corpus: list[dict], tmp_path):
    base = snapshot.latest_id(store)
    baseline = Path(shutil.copytree(store, tmp_path / "baseline"))
    journal = store / f".sync-{base}"
    with FakeDanbooru(corpus) as api:
        expected = sync_metadata(sync_config(baseline, api.url))
        n_before = len(api.requests)

        # 1: killed while fetching, after 4 of ~16 pages
        proc = start_sync(store, api.url, tmp_path, rate=10)
        kill_when(proc, lambda: len(list(journal.glob("pages/page-*.json"))) >= 4)
        assert proc.returncode == -9 and snapshot.latest_id(store) == base
        kept = len(list(journal.glob("pages/page-*.json")))
        assert 4 <= kept < expected.pages

        # 2: the rerun is killed once fetching is done, while it merges (or just after)
        proc = start_sync(store, api.url, tmp_path, rate=500)
        kill_when(proc, lambda: (journal / "done").is_file())
        assert snapshot.latest_id(store) in (base, expected.snapshot)
        resumed = api.requests[n_before:]
        # the rerun continued after the journaled pages: no page was fetched twice
        cursors = [r.query["page"] for r in resumed if r.status == 200]
        assert len(cursors) == len(set(cursors))

        result = sync_metadata(sync_config(store, api.url))
    assert result.snapshot == expected.snapshot == snapshot.latest_id(store)
    mine, theirs = snapshot.read_snapshot(store), snapshot.read_snapshot(baseline)
    assert mine.tables == theirs.tables and not journal.exists()
