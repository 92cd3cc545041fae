"""The stage protocol: every stage writes into `<run>/<stage>/` and is done once its
`manifest.json` exists.

Reads: nothing but what callers pass. Writes: a stage directory, built under a
temporary sibling (`.<stage>.partial-<pid>`) and renamed into place after the manifest
is written, so a killed stage never leaves a half-written output behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "manifest.json"


class FileFingerprint(BaseModel):
    """Cheap identity of an input file: path, size, mtime (and content hash for small files)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    size: int
    mtime_ns: int
    sha256: str | None = Field(None, description="content hash, for files up to 1 MiB")


class Manifest(BaseModel):
    """What a stage produced, from what, with which config and code."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    stage: str
    stage_version: str
    config_hash: str
    inputs: dict[str, Any]
    outputs: dict[str, str] = Field(description="name -> file name inside the stage dir")
    counts: dict[str, Any]
    timings: dict[str, float]
    versions: dict[str, str]
    created_at: float

    def output_path(self, stage_dir: Path, name: str) -> Path:
        return stage_dir / self.outputs[name]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB chunks (bounded memory on GB-sized files)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(model: BaseModel) -> str:
    """Stable hash of a pydantic model's JSON form (same across processes and machines)."""
    return sha256_bytes(model.model_dump_json().encode())[:16]


def fingerprint(path: Path, hash_limit: int = 1 << 20) -> FileFingerprint:
    """Fingerprint a file, or a directory as the fingerprints of its files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = sha256_bytes(
            json.dumps([fingerprint(p, hash_limit).model_dump() for p in files]).encode()
        )
        return FileFingerprint(path=str(path), size=len(files), mtime_ns=0, sha256=digest)
    st = path.stat()
    content = None
    if st.st_size <= hash_limit:
        content = hashlib.sha256(path.read_bytes()).hexdigest()
    return FileFingerprint(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=content)


def library_versions(*names: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("kohaku", *names):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_manifest(stage_dir: Path) -> Manifest | None:
    """The stage's manifest, or None when the stage has not finished."""
    path = Path(stage_dir) / MANIFEST
    if not path.is_file():
        return None
    return Manifest.model_validate_json(path.read_text())


def reusable(stage_dir: Path, config_hash: str, inputs: dict, version: str) -> Manifest | None:
    """The finished stage's manifest when it was built from the same config, inputs and
    stage version (so the stage need not run again), else None."""
    done = read_manifest(stage_dir)
    if done and (done.config_hash, done.inputs, done.stage_version) == (
        config_hash,
        inputs,
        version,
    ):
        return done
    return None


def temp_name(path: Path) -> Path:
    """A hidden sibling of `path` that no other writer uses: `.<name>.<random>.tmp-<pid>`
    (the trailing pid lets a later run find the leftovers of a killed one)."""
    return path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp-{os.getpid()}")


def new_file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (0o644 under 0o022).

    Writers such as safetensors' `save_file` create their files 0600; a model or manifest
    should be readable by whoever may read its folder, like any other file written here.
    Linux reports the umask in /proc (reading it does not change it); elsewhere it is set
    and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write a file or a folder at; when the block
    succeeds it takes `path`'s place (a folder replaces a folder), else it is removed. A
    file gets the mode a new file gets under the umask (`new_file_mode`), whatever mode
    its writer created it with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if tmp.is_dir():
            replace_dir(tmp, path)
        else:
            os.chmod(tmp, new_file_mode())
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@dataclass
class StageBuild:
    """A stage directory under construction; files go into `.dir`."""

    stage: str
    dir: Path
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 4)


@contextmanager
def build_stage(run_dir: Path, stage: str) -> Iterator[StageBuild]:
    """Build a stage dir atomically. On error the partial dir is removed and the
    previous output (if any) stays untouched."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / stage
    _remove_stale_partials(run_dir, stage)
    partial = run_dir / f".{stage}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    build = StageBuild(stage=stage, dir=partial)
    try:
        yield build
        if not (partial / MANIFEST).is_file():
            raise RuntimeError(f"stage {stage!r} finished without writing its manifest")
        replace_dir(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _remove_stale_partials(run_dir: Path, stage: str) -> None:
    """Partial dirs left by killed processes (their pid is gone) are removed."""
    for path in run_dir.glob(f".{stage}.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a writer's temp files are then not stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_dir(partial: Path, final: Path) -> None:
    """Put the folder `partial` in place of the folder `final` (moved aside, then removed)."""
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a directory; move it away")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def write_manifest(build: StageBuild, **fields: Any) -> Manifest:
    """Write the manifest last; it marks the stage as complete."""
    build.timings["total"] = round(time.perf_counter() - build.started, 4)
    manifest = Manifest(
        stage=build.stage, timings=dict(build.timings), created_at=time.time(), **fields
    )
    atomic_write_text(build.dir / MANIFEST, manifest.model_dump_json(indent=2))
    return manifest
