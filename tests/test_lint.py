"""The code base passes ruff (lint and format), as `make lint` checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["kohaku", "flows", "tasks", "deployments", "tests", "bench"]


def test_ruff_check_and_format():
    for args in (["check"], ["format", "--check"]):
        out = subprocess.run([sys.executable, "-m", "ruff", *args, *PATHS], cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
