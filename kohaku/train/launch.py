"""Start the trainer as child processes (torchrun for more than one) and follow them.

Reads: the train config, written to `<run>/train/config.json` for the child. Writes
nothing itself; the trainer writes `<run>/train/` (see `kohaku.train.loop`). The child's
output is passed line by line to a callback (logging, progress); metric lines start with
`kohaku-train ` followed by JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kohaku.train.config import TrainConfig

METRIC_PREFIX = "kohaku-train "


@dataclass(frozen=True)
class Launched:
    returncode: int
    tail: list[str]  # the last lines of output, for the error message
    last_metrics: dict | None


def command(cfg: TrainConfig, config_file: Path, run_dir: Path) -> list[str]:
    """`python -m kohaku.train.process ...`, under torch.distributed.run (torchrun) when more
    than one process is asked for."""
    module = "kohaku.train.process"  # the trainer process (kohaku.train.run is the stage)
    trainer = ["-m", module, "--config", str(config_file), "--run-dir", str(run_dir)]
    d = cfg.dist
    if d.world_size == 1:
        return [sys.executable, *trainer]
    where = (["--standalone"] if d.nnodes == 1 else
             [f"--nnodes={d.nnodes}", f"--node_rank={d.node_rank}",
              f"--master_addr={d.master_addr}", f"--master_port={d.master_port}"])  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", *where,
            f"--nproc_per_node={d.nproc_per_node}", *trainer]  # fmt: skip


def parse_metrics(line: str) -> dict | None:
    if not line.startswith(METRIC_PREFIX):
        return None
    try:
        return json.loads(line[len(METRIC_PREFIX) :])
    except json.JSONDecodeError:
        return None


def launch(cmd: list[str], on_line: Callable[[str], None], env: dict | None = None,
           cwd: Path | None = None) -> Launched:  # fmt: skip
    """Run `cmd`, stream its merged output to `on_line`; returns the exit code and tail."""
    tail: deque[str] = deque(maxlen=40)
    last = None
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=full_env, cwd=cwd, bufsize=1) as proc:  # fmt: skip
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            last = parse_metrics(line) or last
            on_line(line)
    return Launched(proc.returncode, list(tail), last)
