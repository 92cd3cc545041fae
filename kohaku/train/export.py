"""Merged models: a trained LoKr folded into its base SDXL, saved as a single-file (SGM
layout) checkpoint or a diffusers folder, in fp32, fp16, bf16 or fp8 (e4m3fn) storage.

Reads the base model (an SGM single-file `.safetensors` or a diffusers folder) tensor by
tensor and a kohaku LoKr file. Writes the merged model atomically through `kohaku.merge`,
the one implementation of folding a LoKr into weights: a single file by the streamed merge
(every key of the base kept: `position_ids`, `logit_scale`, `v_pred` / `ztsnr` markers, and
those a v-prediction or zero-terminal-SNR LoKr needs added; ModelSpec metadata with the
prediction type), a diffusers folder from a diffusers base in the
folder's own names (`kohaku.merge.folder`). Memory holds a few tensors at a time, except
on the one path marked MINIMAL below. A base with a LoKr in it (`ModelSource.lokr`, from
`train.model.lokr` or `kohaku export --base-lokr`) gets that LoKr first, then the trained
one: the weights the trained LoKr was trained on, plus it; a LoKr that records it was
trained on top of another is refused without it (`kohaku.sdxl.lokr_deltas.check_trained_on`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kohaku.merge import DTYPES, LokrMerge, MergeRecipe, merge
from kohaku.sdxl.lokr_deltas import LokrLayer

if TYPE_CHECKING:
    from kohaku.sdxl.parts import ModelSource

log = logging.getLogger(__name__)

Storage = Literal["fp32", "fp16", "bf16", "fp8"]
Kind = Literal["diffusers", "single_file"]


def export_merged(
    source: ModelSource, lokr_file: Path, out: Path, kind: Kind, storage: Storage = "fp16"
) -> Path:
    """Write the merged model to `out` (a folder for diffusers, a .safetensors file): the
    source's base LoKr, if any, then `lokr_file`."""
    lokrs = [*_below(source.lokr), LokrMerge(file=Path(lokr_file))]
    if kind == "single_file":
        return merged_single_file(Path(source.path), lokrs, Path(out), storage)
    if source.kind == "diffusers":
        from kohaku.merge import merge_lokr_into_folder

        first = [(x.file, x.weight) for x in lokrs[:-1]]
        return merge_lokr_into_folder(source.path, Path(lokr_file), Path(out), DTYPES[storage],
                                      first=first)  # fmt: skip
    return _folder_from_single_file(source, lokrs, Path(out), storage)


def _below(layer: LokrLayer | None) -> list[LokrMerge]:
    return [] if layer is None else [LokrMerge(file=layer.path, weight=layer.weight)]


def merged_single_file(base: Path, lokrs: list[LokrMerge], out: Path, storage: Storage) -> Path:
    """The streamed merge of `base + LoKrs` (a recipe with one model), into `out`."""
    recipe = MergeRecipe(models={"base": base}, expression="base", output=out, dtype=storage,
                         lokr=lokrs)  # fmt: skip
    return merge(recipe).output


def _folder_from_single_file(
    source: ModelSource, lokrs: list[LokrMerge], out: Path, storage: Storage
) -> Path:
    """MINIMAL PATH, until `kohaku.train` maps SGM names to diffusers names tensor by tensor:
    the merge is streamed into a single file beside `out`, which diffusers' single-file
    loader then reads whole (about the model's size in memory, plus the loader's own copy)
    and `save_diffusers` writes as a folder. The merge itself is the streamed one."""
    from kohaku.sdxl.model import check_model_path, load_sdxl, save_diffusers

    log.warning("diffusers export from a single file loads the merged model whole")
    held = "fp16" if storage == "fp8" else storage  # fp8 is cast when the folder is written
    merged = out.with_name(f".{out.name}.merged.safetensors")
    try:
        merged_single_file(Path(source.path), lokrs, merged, held)
        # checked, not made by hand: its v_pred / ztsnr keys give the folder its schedule
        single = check_model_path(merged, source.allow_pickle, source.config_dir)
        return save_diffusers(load_sdxl(single, DTYPES[held]), out, DTYPES[storage])
    finally:
        merged.unlink(missing_ok=True)
