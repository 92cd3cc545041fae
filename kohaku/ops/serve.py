"""`kohaku serve`: everything one machine needs to launch, schedule and watch runs from
the Prefect UI. Starts a local Prefect server on SQLite (its own `PREFECT_HOME`, no
telemetry) and, once it answers, `python -m deployments.serve` (every deployment served
from one process); prints the UI's URL and stops both on Ctrl-C or SIGTERM.

Reads: the run config the deployments default to (checked before anything starts).
Writes: the server's SQLite database under the Prefect home. Prefect itself runs in the
child processes: this package never imports it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # where `flows`, `tasks`, `deployments` live


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of the server and the served deployments: a project-local Prefect
    home, no telemetry (prefect-notes.md)."""
    env = {**os.environ, "PREFECT_HOME": str(home), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true"}  # fmt: skip
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `<url>/api/health` answers; a server that exits or stays silent is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"the Prefect server at {url} did not answer within {timeout:.0f}s")


@dataclass
class Served:
    """The running server and deployments; `stop()` ends both, deployments first."""

    url: str
    server: subprocess.Popen
    deployments: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 20) -> None:
        for proc in (self.deployments, self.server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def start_server(home: Path, port: int = 4200, host: str = "127.0.0.1") -> Served:
    """A Prefect server on SQLite in `home` (its log in `home/server.log`); returns once
    it answers. Port 0 takes a free one."""
    home.mkdir(parents=True, exist_ok=True)
    # Ctrl-C and SIGTERM stop us; children then start with default handlers even when we
    # were started with SIGINT ignored (a background job of a script)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    port = port or free_port()
    url = f"http://{host}:{port}"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    env = prefect_env(home)
    # the UI's browser code calls this address (else it assumes port 4200)
    env.setdefault("PREFECT_UI_API_URL", f"{url}/api")
    with open(home / "server.log", "ab") as log:
        server = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_healthy(url, server)
    except BaseException:
        Served(url, server).stop()
        raise
    return Served(url, server, env=prefect_env(home, f"{url}/api"))


def serve_deployments(served: Served, args: list[str]) -> None:
    """Start `python -m deployments.serve <args>` against the server."""
    cmd = [sys.executable, "-m", "deployments.serve", *args]
    served.deployments = subprocess.Popen(cmd, env=served.env, cwd=ROOT)


def run_until_stopped(served: Served) -> int:
    """Wait until Ctrl-C / SIGTERM or a child exits; stop both; the exit code."""
    try:
        while served.server.poll() is None and served.deployments.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        served.stop()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
