"""Layering rules: `kohaku` never imports Prefect; data modules never import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_MODULES = [
    "kohaku.cli", "kohaku.config", "kohaku.demo.run", "kohaku.stage", "kohaku.demo.synth",
    "kohaku.download.placement", "kohaku.download.resize", "kohaku.download.resize_vips",
    "kohaku.fetch", "kohaku.download.shard", "kohaku.download.run", "kohaku.download.sources",
    "kohaku.download.reasons", "kohaku.download.config", "kohaku.buckets.run",
    "kohaku.evaluate.config", "kohaku.evaluate.prompts", "kohaku.evaluate.report",
    "kohaku.sample", "kohaku.sample.run", "kohaku.tag", "kohaku.tag.run",
    "kohaku.metadata.store", "kohaku.metadata.sync",
]  # fmt: skip


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_source_never_imports_prefect_or_flows():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "kohaku").rglob("*.py")
        if imported_roots(p) & {"prefect", "flows", "tasks"}
    ]
    assert offenders == []


def test_importing_data_modules_loads_neither_prefect_nor_torch():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in DATA_MODULES)
        + "bad = sorted(m for m in ('prefect', 'torch', 'diffusers') if m in sys.modules)\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_required_layout_exists():
    for name in ("pyproject.toml", "README.md", "ARCHITECTURE.md", "flows", "tasks", "kohaku",
                 "deployments", "tests", "docker", "bench/README.md", ".ci/run"):  # fmt: skip
        assert (ROOT / name).exists(), name
