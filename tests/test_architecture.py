"""The library's shape (ARCHITECTURE.md): `kohaku` never imports Prefect; the data stages
never load torch; no import circles inside `kohaku/`; every stage is a package laid out the
same way, and a stage reads another stage only through that stage's package exports, its
`config` or its entry `run`.

Imports are read from the source with `ast`. Module-level imports and imports inside
functions both count everywhere. Type-only imports (under `if TYPE_CHECKING:`) count for the
stage-privacy rule (a type is still a reach into another stage) but not for circles: they
never run, so they cannot make one (`kohaku.train.loader` names `latents.LatentCache`, whose
module imports the loader, only as a type)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the stage packages, named as the user names the stages (`kohaku <stage>`)
STAGES = ("sample", "tag", "download", "buckets", "train", "evaluate", "merge", "metadata")
DATA_STAGES = ("sample", "tag", "download", "buckets", "metadata")  # never torch
# below the stages: may import the base modules and the stages' config models only
SHARED = ("sdxl",)  # kohaku.ops, kohaku.demo and kohaku.cli sit above the stages: unchecked
# below everything: import no stage, no shared package (`kohaku.config` composes the stage
# configs, so it may import those)
BASE = ("kohaku.errors", "kohaku.stage", "kohaku.fetch", "kohaku.logs", "kohaku.config")
# the modules of another stage a stage may import: its package exports, config and entry
PUBLIC = ("", ".config", ".run")
# metadata keeps a store across runs instead of writing a stage dir: its entries are
# `store.import_metadata`, `sync.sync_metadata` and `prune.prune`, not a `run` module
WITHOUT_RUN = {"metadata"}
# modules beyond the data stages that must import without torch (the command line starts
# fast, and the UI's report modules run on machines without the `train` extra)
LIGHT = ["kohaku.config", "kohaku.stage", "kohaku.fetch", "kohaku.errors", "kohaku.cli",
         "kohaku.cli.data", "kohaku.cli.metadata", "kohaku.cli.model", "kohaku.cli.ops",
         "kohaku.demo.run", "kohaku.demo.synth", "kohaku.demo.api_pages", "kohaku.demo.images",
         "kohaku.ops.serve", "kohaku.ops.charts", "kohaku.train.config",
         "kohaku.evaluate.config", "kohaku.evaluate.prompts", "kohaku.evaluate.report"]  # fmt: skip


def module_files() -> dict[str, Path]:
    """Every module of `kohaku/` by dotted name (a package by its own name)."""
    out = {}
    for path in (ROOT / "kohaku").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = module_files()


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def type_only(tree: ast.Module) -> set[ast.AST]:
    """The import nodes under `if TYPE_CHECKING:` (never run)."""
    ifs = [n for n in ast.walk(tree) if isinstance(n, ast.If)]
    named = [(n, getattr(n.test, "id", getattr(n.test, "attr", ""))) for n in ifs]
    blocks = [n for n, name in named if name == "TYPE_CHECKING"]
    return {n for block in blocks for stmt in block.body for n in ast.walk(stmt)}


def kohaku_imports(path: Path, typing: bool = True) -> set[str]:
    """The `kohaku` modules a file imports (with `typing=False`, the type-only ones left
    out): `from a.b import c` counts as `a.b.c` when that is a module, else as `a.b`."""
    out = set()
    tree = ast.parse(path.read_text())
    skip = set() if typing else type_only(tree)
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom) and node.module in MODULES and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            out |= subs if len(subs) == len(node.names) else subs | {node.module}
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs: what it imports, and the packages above
    those (importing `a.b.c` runs `a.b`'s `__init__` too), except its own packages (already
    running when it is imported). Module-level and function-level imports, not type-only."""
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for dep in kohaku_imports(path, typing=False):
            parts = dep.split(".")
            deps |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
        graph[name] = {d for d in deps if d in MODULES and d != name
                       and not name.startswith(d + ".")}  # fmt: skip
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (ROOT / "kohaku" / parts[1]).is_dir() else None


def test_library_source_never_imports_prefect_or_flows():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "kohaku").rglob("*.py")
        if imported_roots(p) & {"prefect", "flows", "tasks"}
    ]
    assert offenders == []


def test_data_stage_source_never_imports_torch():
    heavy = {"torch", "diffusers", "transformers", "lycoris", "safetensors", "bitsandbytes"}
    data = {name: path for name, path in MODULES.items() if package_of(name) in DATA_STAGES}
    offenders = sorted(f"{name}: {sorted(imported_roots(path) & heavy)}"
                       for name, path in data.items() if imported_roots(path) & heavy)  # fmt: skip
    assert offenders == []


def test_importing_data_modules_loads_neither_prefect_nor_torch():
    data = sorted(m for m in MODULES if package_of(m) in DATA_STAGES)
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in data + LIGHT)
        + "bad = sorted(m for m in ('prefect', 'torch', 'diffusers') if m in sys.modules)\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_trainer_and_evaluate_load_no_duckdb():
    """They read the sample stage's config, never its DuckDB queries (35 MB resident)."""
    code = ("import sys, kohaku.train.process, kohaku.train.loop, kohaku.evaluate.run\n"
            "print('duckdb' in sys.modules)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_import_circles_inside_kohaku():
    found = cycles(import_graph())
    assert found == [], f"import circles (modules importing each other, directly or not): {found}"


def test_type_only_imports_are_left_out_of_circles_but_not_of_privacy(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from kohaku.train.latents import LatentCache\n"
                    "def f():\n    from kohaku.errors import InputError\n")  # fmt: skip
    assert kohaku_imports(path) == {"kohaku.train.latents", "kohaku.errors"}
    assert kohaku_imports(path, typing=False) == {"kohaku.errors"}


def test_cycle_finder_finds_a_circle_through_a_package_init():
    graph = {"a": {"a.x"}, "a.x": {"b.y", "b"}, "b": set(), "b.y": {"a"}}
    assert cycles(graph) == [["a", "a.x", "b.y"]]


def test_every_stage_is_a_package_laid_out_the_same_way():
    for stage in STAGES:
        folder = ROOT / "kohaku" / stage
        needed = ["__init__.py", "config.py"] + ([] if stage in WITHOUT_RUN else ["run.py"])
        assert [n for n in needed if not (folder / n).is_file()] == [], stage
    loose = sorted(p.stem for p in (ROOT / "kohaku").glob("*.py"))
    assert loose == sorted(["__init__", *(m.split(".")[1] for m in BASE)])


def test_a_stage_reads_another_stage_only_through_its_exports_config_and_run():
    offenders = []
    for name, path in MODULES.items():
        own = package_of(name)
        for dep in kohaku_imports(path):
            other = package_of(dep)
            if own in STAGES and other in STAGES and other != own:
                allowed = {f"kohaku.{other}{suffix}" for suffix in PUBLIC}
            elif own in SHARED and other in STAGES:
                allowed = {f"kohaku.{other}.config"}
            elif name in BASE and (other in STAGES or other in SHARED):
                configs = {f"kohaku.{s}.config" for s in STAGES}
                allowed = configs if name == "kohaku.config" else set()
            else:
                continue
            if dep not in allowed:
                offenders.append(f"{name} -> {dep}")
    assert offenders == []


def test_required_layout_exists():
    for name in ("pyproject.toml", "README.md", "ARCHITECTURE.md", "flows", "tasks", "kohaku",
                 "deployments", "tests", "docker", "bench/README.md", ".ci/run"):  # fmt: skip
        assert (ROOT / name).exists(), name
