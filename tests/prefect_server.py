"""The session's one real Prefect server, started the way a user starts it: `kohaku serve`
(a `prefect server start` subprocess on a free 127.0.0.1 port with its own PREFECT_HOME,
and every deployment served from `python -m deployments.serve`). Every flow test talks to
it (`prefect_api` in tests/conftest.py), so a session pays one server start (its ~10 s
of database migrations included) instead of one per fixture, and that start runs while
the first tests do (`Launched.ready` waits for it when a test needs it).

The deployments default to the demo's data stages on a small database (300 posts, ~100
sampled, pictures from the demo's image server): train and evaluate are left out of the
default because the trainer's start alone costs ~35 s on 2 cores; one test
(tests/ops/test_pipeline.py) runs the demo's full config, train and evaluate included at
toy size, through the same deployment. Writes under the root it is given: `demo/`
(data.toml, metadata/danbooru.db, the runs), `prefect/` (the server's home) and serve.log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kohaku.demo.images import ImageServer, stamp_md5s
from kohaku.demo.run import DEMO_DOWNLOAD, DEMO_URL_KEY
from kohaku.demo.synth import generate_danbooru_db

DATA_ONLY = (
    """# the demo's data stages (no [train], no [evaluate])
preset = "epsilon"
run_dir = "run"
[sample]
source = "metadata/danbooru.db"
seed = 5
on_short_range = "take_all"
[[sample.ranges]]
start = 0
count = 120
"""
    + DEMO_DOWNLOAD
)


@dataclass
class Served:
    url: str  # the UI
    api: str  # PREFECT_API_URL
    demo: Path  # data.toml, metadata/danbooru.db, run/
    overrides: list[str]  # the deployments' default overrides
    log: Path  # kohaku serve's output (server and flow-run logs)
    proc: subprocess.Popen  # kohaku serve

    def wait_for_deployment(self, name: str):
        """Deployment `name`, once `kohaku serve` has registered it (it serves them once
        the server answers, while the session goes on)."""
        return wait_for(lambda: deployment(name), self.proc, self.log)


@dataclass
class Launched:
    """`kohaku serve` started, not necessarily answering yet."""

    demo: Path
    overrides: list[str]
    log: Path
    proc: subprocess.Popen
    _served: Served | None = None

    def ready(self) -> Served:
        """The server, once it answers (it prints the UI's URL then)."""
        if self._served is None:
            found = wait_for(lambda: re.search(r"Prefect UI: (\S+)", self.log.read_text()),
                             self.proc, self.log)  # fmt: skip
            url = found[1]
            self._served = Served(url, f"{url}/api", self.demo, self.overrides, self.log,
                                  self.proc)  # fmt: skip
        return self._served


@contextmanager
def kohaku_serve(root: Path) -> Iterator[Launched]:
    """`kohaku serve` on a small demo under `root`, started; stopped on exit."""
    demo, log = root / "demo", root / "serve.log"
    db = demo / "metadata" / "danbooru.db"
    db.parent.mkdir(parents=True)
    generate_danbooru_db(db, 300, seed=0)
    stamp_md5s(db)  # the pictures' md5s, so md5 checks stay on
    (demo / "data.toml").write_text(DATA_ONLY)
    with ImageServer(db) as images:
        overrides = [f"{DEMO_URL_KEY}={images.url_template}"]
        # one torch thread in the flow runs and the trainer they start, as in every torch
        # test (tests/torch_fixtures.py): with two, the toy train and evaluate stages took
        # 4-5x longer on a busy 2-core machine (thread hand-offs dominate tiny models)
        env = {**os.environ, "PREFECT_HOME": str(root / "prefect"),
               "PREFECT_RUNNER_POLL_FREQUENCY": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
        env.pop("PREFECT_API_URL", None)
        cmd = [sys.executable, "-m", "kohaku.cli", "serve", "--port", "0", "--config",
               str(demo / "data.toml"), *(f"--set={o}" for o in overrides)]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield Launched(demo, overrides, log, proc)
        finally:
            proc.send_signal(signal.SIGINT)  # kohaku serve stops its children
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for(probe, proc: subprocess.Popen, log: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"kohaku serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            )
        if found := probe():
            return found
        time.sleep(0.3)
    raise TimeoutError(f"kohaku serve not ready:\n{log.read_text()[-3000:]}")


def deployment(name: str):
    """The deployment `name` (flow/deployment) on the current API, or None."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def drain_workers() -> None:
    """Send the logs and events still queued in this process before the server stops
    (as prefect_test_harness does), so that none fails on a closed connection."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())
