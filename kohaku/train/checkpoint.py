"""Training checkpoints: `<run>/train/checkpoints/step-NNNNNN/`, safetensors and JSON only.

Writes, per checkpoint: `adapter.safetensors` (LoKr weights, training names, full
precision), `ema.safetensors` (the same names with the EMA's averaged weights; only with
`train.ema`), `optimizer.safetensors` + `optimizer.json` (every state tensor, and the
non-tensor state and param groups), `rng-rank<R>.safetensors` + `rng-rank<R>.json` (each
rank's torch, numpy and python RNG states) and, last, `meta.json` (step, data position,
scheduler, grad scaler): a checkpoint without `meta.json` does not count and is removed.
Reads the newest complete checkpoint back into the same objects. Keeps the last k.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kohaku.stage import atomic_path, atomic_write_text
from kohaku.train import EMA_FILE, META  # noqa: F401  (the names evaluate reads, defined there)


@dataclass(frozen=True)
class Position:
    """Where training stands: optimizer steps done and the next global micro-batch."""

    step: int
    epoch: int
    index: int


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def latest(root: Path) -> Path | None:
    """The newest checkpoint whose meta.json exists; incomplete ones are ignored."""
    done = sorted(p for p in Path(root).glob("step-*") if (p / META).is_file())
    return done[-1] if done else None


def _atomic_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def _atomic_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def optimizer_split(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as (tensors by dotted path, the rest as JSON with a
    `{"__tensor__": path}` marker where each tensor was; bitsandbytes nests dicts)."""
    tensors: dict[str, torch.Tensor] = {}
    entries = {str(k): _split(v, f"state.{k}", tensors) for k, v in state["state"].items()}
    plain = {"param_groups": state["param_groups"], "state": entries}
    return tensors, plain


def _split(value, path: str, tensors: dict[str, torch.Tensor]):
    if torch.is_tensor(value):
        tensors[path] = value
        return {"__tensor__": path}
    if isinstance(value, dict):
        return {str(k): _split(v, f"{path}.{k}", tensors) for k, v in value.items()}
    return value


def optimizer_join(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {int(k): _join(v, tensors) for k, v in plain["state"].items()}
    return {"state": state, "param_groups": plain["param_groups"]}


def _join(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _join(v, tensors) for k, v in value.items()}
    return value


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].copy())}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    plain = {"numpy": [np_state[0], *np_state[2:]], "python": [py_state[0], list(py_state[1]),
             py_state[2]]}  # fmt: skip
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    kind, *rest = plain["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy(), *rest))
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclass
class TrainState:
    """What a checkpoint restores (the objects are changed in place)."""

    adapter: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    position: Position
    ema: dict[str, torch.Tensor] | None = None  # `EMA.state`: adapter names, averaged weights


def save(root: Path, state: TrainState, rank: int, world: int, barrier) -> Path:
    """Rank 0 writes the shared state, every rank its RNG, then rank 0 the meta."""
    out = step_dir(root, state.position.step)
    if rank == 0:
        shutil.rmtree(out, ignore_errors=True)  # a stale incomplete one of the same step
        out.mkdir(parents=True)
        _atomic_tensors(out / "adapter.safetensors", state.adapter)
        if state.ema is not None:
            _atomic_tensors(out / EMA_FILE, state.ema)
        tensors, plain = optimizer_split(state.optimizer)
        _atomic_tensors(out / "optimizer.safetensors", tensors)
        _atomic_json(out / "optimizer.json", plain)
    barrier()
    tensors, plain = rng_state()
    _atomic_tensors(out / f"rng-rank{rank}.safetensors", tensors)
    _atomic_json(out / f"rng-rank{rank}.json", plain)
    barrier()
    if rank == 0:
        meta = {"position": asdict(state.position), "scheduler": state.scheduler,
                "scaler": state.scaler, "world_size": world}  # fmt: skip
        _atomic_json(out / META, meta)
    barrier()
    return out


def load(path: Path, rank: int) -> TrainState:
    """A checkpoint's state, with this rank's RNG restored."""
    meta = json.loads((path / META).read_text())
    rng = path / f"rng-rank{rank}.safetensors"
    if not rng.is_file():
        raise ValueError(f"{path} was written by {meta['world_size']} ranks; rank {rank} has no "
                         "RNG state there: resume with the same world size")  # fmt: skip
    set_rng_state(load_file(str(rng)), json.loads((path / f"rng-rank{rank}.json").read_text()))
    optimizer = optimizer_join(load_file(str(path / "optimizer.safetensors")),
                               json.loads((path / "optimizer.json").read_text()))  # fmt: skip
    ema = load_file(str(path / EMA_FILE)) if (path / EMA_FILE).is_file() else None
    return TrainState(load_file(str(path / "adapter.safetensors")), optimizer,
                      meta["scheduler"], meta["scaler"], Position(**meta["position"]),
                      ema)  # fmt: skip


def prune(root: Path, keep: int) -> None:
    """Remove all but the newest `keep` complete checkpoints, and incomplete older ones."""
    complete = sorted(p for p in Path(root).glob("step-*") if (p / META).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    newest = complete[-1] if complete else None
    for partial in Path(root).glob("step-*"):
        if not (partial / META).is_file() and (newest is None or partial < newest):
            shutil.rmtree(partial, ignore_errors=True)
