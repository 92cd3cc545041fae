"""Cache policy shared by the stage tasks.

A stage is cached on its inputs: the config sections it reads (each task takes only
those), the upstream manifests it builds on or the fingerprints of its input files, the
task's source, and the stage's version (Prefect's TASK_SOURCE only sees the task body,
not the library it calls: prefect-notes.md). A changed config field therefore
re-executes the stages that read it and, through their new manifests, the stages after
them; nothing else. Results persist under `<run_dir>/.prefect/results`, so a new run, a
retried flow run or the UI's Retry button find them.

Retries (`retryable`): a crash, a lost connection or a trainer stopped by SIGTERM is
retried; a config or input error never is (the same input fails the same way).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.tasks import Task

import kohaku
from kohaku.errors import InputError, is_config_error
from kohaku.stage import MANIFEST, FileFingerprint, fingerprint, read_manifest


@dataclass
class StageVersion(CachePolicy):
    """Adds the stage version and the kohaku version to the cache key. `version` may be
    `"module:NAME"`, imported when a key is computed, so that a flow whose train stage is
    cached never imports torch."""

    stage: str = ""
    version: str = ""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs: Any) -> str:
        version = self.version
        if ":" in version:
            module, name = version.split(":")
            version = getattr(importlib.import_module(module), name)
        return f"{self.stage}-v{version}-kohaku{kohaku.__version__}"


def retryable(task, task_run, state) -> bool:
    """A stage task's `retry_condition_fn`: retry anything but a config or input error,
    which is reported at once (issue 12: a wrong model path took 2 min, retried 3 times)."""
    return not is_config_error(state.result(raise_on_failure=False))


def stage_policy(stage: str, version: str, ignore: tuple[str, ...] = ()) -> CachePolicy:
    """INPUTS (minus arguments that never change the output) + TASK_SOURCE + version."""
    inputs = INPUTS
    for name in ignore:
        inputs = inputs - name
    return inputs + TASK_SOURCE + StageVersion(stage=stage, version=version)


def for_run(task: Task, run_dir: Path, stage: str, done: bool | None = None) -> Task:
    """The task with results persisted under the run dir; a stage whose output folder
    was removed since it was cached is re-executed instead of returning a stale result."""
    if done is None:
        done = (Path(run_dir) / stage / MANIFEST).is_file()
    return task.with_options(
        result_storage=Path(run_dir).resolve() / ".prefect" / "results",
        refresh_cache=not done,
    )


def file_key(path: Path | None) -> FileFingerprint | None:
    """An input file's identity for a task's cache key: its fingerprint (size, mtime and,
    up to 1 MiB, its content), so a file rewritten at the same path is no stale cache hit.
    None for no file, or for a missing one, which the stage reports as its input error."""
    return fingerprint(path) if path is not None and Path(path).exists() else None


def inputs_of(run_dir: Path, *stages: str, then: str) -> list[dict]:
    """The identity of the upstream stages a stage reads, for its cache key: each finished
    stage's manifest (config hash, version, time), or, for a folder made without one, the
    fingerprint of its files. A missing upstream stage is one clear error."""
    out = []
    for stage in stages:
        folder = Path(run_dir) / stage
        if (m := read_manifest(folder)) is not None:
            out.append({"stage": stage, "config_hash": m.config_hash,
                        "version": m.stage_version, "created_at": m.created_at})  # fmt: skip
        elif folder.is_dir():
            out.append({"stage": stage, "files": fingerprint(folder).sha256})
        else:
            raise InputError(f"{folder} has no finished {stage} stage; run it before {then}")
    return out
