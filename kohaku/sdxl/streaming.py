"""Checkpoint tensors streamed into modules built with empty weights, one tensor at a time.

Reads safetensors files with plain file reads into one reused buffer (`kohaku.sdxl.tensors`;
safetensors' `safe_open` maps the file, and every page read that way stays resident and
counts in the process's memory), or an allowed pickle through `torch.load(mmap=True)`.
Writes nothing: each tensor is copied straight into the target dtype and device, so the
checkpoint is never held whole and a CUDA load keeps no host copy of the model. A base
LoKr (`train.model.lokr`) is folded into each tensor it targets on the way, in float32,
by `kohaku.sdxl.lokr_deltas.LokrDeltas` (the merge's own code): one tensor at a time, so memory
never holds a second copy of the model.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Literal

import torch

from kohaku.errors import InputError
from kohaku.sdxl import layout
from kohaku.sdxl.configs import SDXLConfigs, empty_models
from kohaku.sdxl.lokr_deltas import LokrDeltas
from kohaku.sdxl.tensors import Scratch, TensorFile, read_header

log = logging.getLogger(__name__)
PICKLE_SUFFIXES = {".ckpt", ".pt", ".bin", ".pth"}
ADAPTED = ("unet", "text_encoder", "text_encoder_2")  # the models a LoKr can change


class Source:
    """Tensors by name, read one at a time (`with` closes the file)."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class DictTensors(Source):
    """A pickle checkpoint's state dict (memory-mapped by torch.load) as a tensor source."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def names(self) -> list[str]:
        return list(self.state)

    def read(self, name: str) -> torch.Tensor:
        return self.state[name]

    def close(self) -> None:
        self.state = {}


class FileTensors(Source):
    """A safetensors file read tensor by tensor, in file order, into one reused buffer."""

    def __init__(self, path: Path):
        self.file, self.scratch = TensorFile(path), Scratch()

    def names(self) -> list[str]:
        specs = self.file.header.specs
        return sorted(specs, key=lambda k: specs[k].start)

    def read(self, name: str) -> torch.Tensor:
        size = self.file.header.specs[name].nbytes
        return self.file.get(name, self.scratch.bytes("read", size))

    def close(self) -> None:
        self.file.close()


def open_tensors(path: Path) -> Source:
    if path.suffix.lower() != ".safetensors":  # an allowed pickle (check_model_path)
        try:  # mapped, not read whole: only zip-format pickles (torch >= 1.6) allow it
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=False)
        return DictTensors(state.get("state_dict", state))
    return FileTensors(path)


def fill(models: dict[str, torch.nn.Module], tensors: Source,
         plan: dict[str, layout.Piece], dtypes: dict[str, torch.dtype],
         device: torch.device, deltas: LokrDeltas | None = None) -> None:  # fmt: skip
    """Each planned tensor read once (with the base LoKr's `deltas`, SGM names, added),
    split into module tensors and put in place."""
    todo = {(p.model, n) for p in plan.values() for n in p.names}
    for key in tensors.names():
        piece = plan.get(key)
        if piece is None:
            continue
        values = layout.from_sgm(piece, with_deltas(deltas, key, tensors.read(key)))
        for name, value in zip(piece.names, values, strict=True):
            put(models[piece.model], name, value, dtypes[piece.model], device)
            todo.discard((piece.model, name))
    if todo:
        raise InputError(f"the checkpoint lacks {len(todo)} tensors, e.g. {sorted(todo)[:3]}")


def with_deltas(deltas: LokrDeltas | None, key: str, raw: torch.Tensor) -> torch.Tensor:
    """`raw`, or base + LoKr in float32 where the LoKr targets `key` (then cast by `put`,
    as an exported merge is cast to its storage)."""
    if deltas is None or not deltas.changes(key):
        return raw
    return deltas.merged(key, raw)


def put(model: torch.nn.Module, name: str, value: torch.Tensor, dtype: torch.dtype,
        device: torch.device) -> None:  # fmt: skip
    """A new frozen parameter in place of the empty one: `value` copied into `dtype` on
    `device` (a copy, never a view of the read buffer)."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    empty = module._parameters[leaf]
    assert empty is not None
    if tuple(value.shape) != tuple(empty.shape):
        raise InputError(f"{name}: the checkpoint has {tuple(value.shape)}, the config "
                         f"{tuple(empty.shape)}")  # fmt: skip
    tensor = torch.empty(value.shape, dtype=dtype, device=device)
    tensor.copy_(value)
    module._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)


@functools.lru_cache(maxsize=4)
def sgm_shapes(configs_json: str) -> dict[str, tuple[int, ...]]:
    """SGM name -> shape of the models the configs describe, built on the meta device
    (nothing allocated; about a second at full size, so once per configs)."""
    models = empty_models(SDXLConfigs.from_json(configs_json))
    states = {name: model.state_dict() for name, model in models.items()}
    return {key: tuple(layout.to_sgm(p, [states[p.model][n] for n in p.names]).shape)
            for key, p in layout.sgm_plan(models).items()}  # fmt: skip


def load_folder(
    path: Path,
    configs: SDXLConfigs,
    dtypes: dict[str, torch.dtype],
    device: torch.device,
    allow_pickle: bool,
    deltas: LokrDeltas | None = None,
) -> dict[str, torch.nn.Module]:
    """Each model of a diffusers folder streamed from its safetensors (with the base LoKr's
    `deltas`, `<component>/<file key>` names, added); a component with only pickle weights,
    or with names of an older diffusers, through from_pretrained (never with a LoKr:
    `folder_shapes` refuses that first)."""
    models = empty_models(configs)
    for name, model in models.items():
        files = weight_files(path / name)
        names = folder_names(model, files)
        if names is None:
            assert deltas is None or name not in ADAPTED, f"{path / name} cannot take a LoKr"
            log.info("%s: loading through from_pretrained (pickle or legacy names)", path / name)
            models[name] = from_pretrained(path, name, dtypes[name], allow_pickle)
            continue
        for file in files:
            with FileTensors(file) as tensors:
                for key in tensors.names():
                    if key in names:
                        value = with_deltas(deltas, f"{name}/{key}", tensors.read(key))
                        put(model, names[key], value, dtypes[name], device)
    return models


def folder_shapes(path: Path, configs: SDXLConfigs) -> dict[str, tuple[int, ...]]:
    """`<component>/<file key>` -> shape, over the UNet's and text encoders' safetensors
    headers (the names `load_folder` streams); a base LoKr merges only into streamed
    tensors, so a component loaded through from_pretrained is refused."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, model in empty_models(configs, ADAPTED).items():
        files = weight_files(path / name)
        if folder_names(model, files) is None:
            raise InputError(f"model.lokr: {path / name} holds pickle weights or names of an "
                             "older diffusers, which load whole: save the folder anew with "
                             "safetensors weights to merge a LoKr into it as it loads")  # fmt: skip
        for file in files:
            shapes |= {f"{name}/{k}": spec.shape for k, spec in read_header(file).specs.items()}
    return shapes


def weight_files(folder: Path) -> list[Path]:
    """The plain weights file, else the shards of an index, else the only `*.safetensors`."""
    for plain in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / plain).is_file():
            return [folder / plain]
    for index in sorted(folder.glob("*.safetensors.index.json")):
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    found = sorted(folder.glob("*.safetensors"))
    return found if len(found) == 1 else []


def folder_names(model: torch.nn.Module, files: list[Path]) -> dict[str, str] | None:
    """File tensor name -> model name, when the files hold exactly the model's tensors
    (text encoders' files may say `text_model.` where transformers 5 does not, and may
    hold position ids); else None."""
    own = {layout.full_name(k): k for k in model.state_dict()}
    names = {k: own.get(layout.full_name(k)) for f in files for k in read_header(f).specs
             if not k.endswith("position_ids")}  # fmt: skip
    if not files or None in names.values() or len(names) != len(own):
        return None
    return names  # type: ignore[return-value]


def from_pretrained(path: Path, name: str, dtype: torch.dtype, allow_pickle: bool):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
           "text_encoder_2": CLIPTextModelWithProjection}[name]  # fmt: skip
    # torch_dtype upcasts float8 files; transformers 5 also takes it (as an alias of `dtype`)
    return cls.from_pretrained(path, subfolder=name, local_files_only=True, torch_dtype=dtype,
                               use_safetensors=None if allow_pickle else True)  # fmt: skip


def check_single_file_suffix(path: Path, allow_pickle: bool) -> Literal["safetensors", "pickle"]:
    """A checkpoint file's kind by its suffix; a pickle only when allowed (unpickling runs
    code)."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise InputError(
                f"{path} is a pickle checkpoint ({suffix}): loading it can run code; convert it "
                "to .safetensors, or set allow_pickle if you trust the source"
            )
        log.warning("%s is a pickle: its architecture is checked only when it loads", path)
        return "pickle"
    if suffix != ".safetensors":
        raise InputError(f"{path}: expected a .safetensors file or a diffusers folder")
    return "safetensors"
