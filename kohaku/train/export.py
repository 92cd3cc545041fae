"""Merged models: a trained LoKr folded into its base SDXL, saved as a diffusers folder or
a single-file (SGM layout) checkpoint, in fp32, fp16, bf16 or fp8 (e4m3fn) storage.

Reads the base model and a kohaku LoKr file (its metadata names the preset and the
adapted components). Writes the merged model atomically (`kohaku.train.model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from kohaku.train import lokr
from kohaku.train.model import ModelSource, load_sdxl, save_diffusers, save_single_file

Storage = Literal["fp32", "fp16", "bf16", "fp8"]
Kind = Literal["diffusers", "single_file"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "fp8": torch.float8_e4m3fn}  # fmt: skip


def merged_parts(source: ModelSource, lokr_file: Path):
    """The base model with the LoKr merged into its weights (float32 in memory)."""
    parts = load_sdxl(source)
    preset, components = lokr.read_recipe(lokr_file)
    models = {c: getattr(parts, c) for c in components}
    adapters = lokr.attach(preset, models, seed=0)
    lokr.load_into(adapters, lokr_file)
    lokr.merge(adapters)
    return parts


def export_merged(
    source: ModelSource, lokr_file: Path, out: Path, kind: Kind, storage: Storage = "fp16"
) -> Path:
    """Write the merged model to `out` (a folder for diffusers, a .safetensors file)."""
    parts = merged_parts(source, lokr_file)
    save = save_diffusers if kind == "diffusers" else save_single_file
    return save(parts, Path(out), DTYPES[storage])
