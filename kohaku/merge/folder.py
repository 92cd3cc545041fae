"""A LoKr folded into a diffusers SDXL folder, in the folder's own names, one tensor at a time.

Reads a diffusers SDXL folder (`model_index.json`, the four models' configs and weights,
tokenizers, scheduler; `sources.open_components`) and a kohaku LoKr file. Writes a diffusers
folder (built under a temporary name, then renamed): each model's weights as one
`diffusion_pytorch_model.safetensors` / `model.safetensors` with every key of the base (the
LoKr's deltas added by `lokr.LokrDeltas`, the same code as a merge recipe's), everything
else copied as it is, and the scheduler's `prediction_type` (and zero-terminal-SNR
settings) set to what the merge says (`run.merged_schedule`: the LoKr's when it records
them). No name is mapped to the SGM layout and back: the deltas are addressed in
diffusers names (`lokr.diffusers_targets`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from kohaku.merge.run import TensorPlan, merged_schedule, write_plan
from kohaku.merge.sources import COMPONENTS, ModelTensors, diffusers_metadata, open_components
from kohaku.sdxl.lokr_deltas import LokrDeltas, diffusers_targets, open_lokrs
from kohaku.sdxl.names import UnetLayout
from kohaku.sdxl.schedule import Schedule
from kohaku.sdxl.tensors import OutSpec
from kohaku.stage import atomic_path

COPIED = ("model_index.json", "scheduler", "tokenizer", "tokenizer_2")
WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
SCHEDULER_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction"}


def merge_lokr_into_folder(
    base: Path,
    lokr_file: Path,
    out: Path,
    dtype: torch.dtype,
    weight: float = 1.0,
    first: Sequence[tuple[Path, float]] = (),
) -> Path:
    """Write `out`: the folder `base` with the LoKr (times `weight`) in its weights, float
    tensors stored in `dtype`; `first`: LoKrs `(path, weight)` folded in before it, in order
    (the one it was trained on top of)."""
    components, files = open_components("base", Path(base))
    meta = diffusers_metadata(Path(base))
    model = ModelTensors("base", Path(base), _namespaced(components), meta, files)
    deltas: LokrDeltas | None = None
    try:
        shapes = {k: v.shape for k, v in model.tensors.items()}
        layout = UnetLayout.from_config(vars(components["unet"].config))
        layers = [*first, (Path(lokr_file), weight)]
        deltas = open_lokrs(layers, shapes, diffusers_targets(shapes, layout))
        schedule = merged_schedule(model, deltas)  # refused as for single files
        with atomic_path(Path(out)) as tmp:
            _copy_files(Path(base), tmp)
            for component, weights in COMPONENTS.items():
                plan = _plan(model, component, dtype)
                meta = {"format": "pt"}
                write_plan(tmp / component / weights, plan, {"base": model}, deltas, meta)
            _set_schedule(tmp, schedule)
    finally:
        model.close()
        if deltas is not None:
            deltas.close()
    return Path(out)


def _namespaced(components: dict) -> dict:
    """`<component>/<key>` -> lazy tensor, over the four models."""
    return {f"{c}/{k}": v for c, comp in components.items() for k, v in comp.state_dict().items()}


def _plan(model: ModelTensors, component: str, dtype: torch.dtype) -> list[TensorPlan]:
    """One model's tensors, under their own names: floats in `dtype`, the rest as they are."""
    plan = []
    for key, lazy in model.tensors.items():
        if not key.startswith(component + "/"):
            continue
        is_float = lazy.dtype.is_floating_point
        spec = OutSpec(key.partition("/")[2], dtype if is_float else lazy.dtype, lazy.shape)
        plan.append(TensorPlan(spec, ((model.name, 1.0),), is_float, source=key))
    return plan


def _copy_files(base: Path, out: Path) -> None:
    """Configs, tokenizers, scheduler and the pipeline index; the weights are written anew."""
    out.mkdir(parents=True)
    for name in COPIED:
        src = base / name
        if src.is_dir():
            shutil.copytree(src, out / name)
        elif src.is_file():
            shutil.copy2(src, out / name)
    for component in COMPONENTS:
        shutil.copytree(base / component, out / component, ignore=shutil.ignore_patterns(*WEIGHTS))


def _set_schedule(folder: Path, schedule: Schedule) -> None:
    """The scheduler config says what the merged weights predict; zero terminal SNR as
    `kohaku.sdxl.configs.SDXLConfigs.with_prediction` sets it (rescaled betas, trailing
    timesteps)."""
    config = folder / "scheduler" / "scheduler_config.json"
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    data["prediction_type"] = SCHEDULER_PREDICTION[schedule.prediction]
    if schedule.zero_snr:
        data |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    config.write_text(json.dumps(data, indent=2))
