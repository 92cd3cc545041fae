"""A LoKr's weight deltas in the key space of a single-file checkpoint (SGM names) or of a
diffusers folder (`<component>/<key>`).

Reads a LoKr `.safetensors` with kohya-layout module names (`lora_unet_input_blocks_4_1_
proj_in`, `lora_te1_text_model_...`, `lora_te2_text_model_...`, as `kohaku.train.lokr`
writes them) and full Kronecker factors `lokr_w1`, `lokr_w2`. Writes nothing. This is the
one place kohaku folds a LoKr into base weights (merge recipes and `[train.export]`).

delta W = weight * kron(w1, w2), reshaped to the weight it targets. With both factors full
matrices lycoris uses a scale of 1 and ignores `alpha` (lycoris `LokrModule.__init__`:
"use scale = 1"; ComfyUI's loader does the same, see shared/stack-notes.md). TE2 is stored
in OpenCLIP names, so its q, k and v projections are row blocks of one `in_proj_weight`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from kohaku.errors import InputError
from kohaku.merge.tensors import TensorFile
from kohaku.train.lokr import META_ZERO_SNR
from kohaku.train.names import UnetLayout, sgm_module_path  # pure string functions

UNET = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer."
TE2_BLOCKS = "conditioner.embedders.1.model.transformer.resblocks."
TE2_LINEAR = {"attn.out_proj": "self_attn_out_proj", "mlp.c_fc": "mlp_fc1", "mlp.c_proj": "mlp_fc2"}
FULL = {"lokr_w1", "lokr_w2", "alpha"}
DIFFUSERS_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


@dataclass(frozen=True)
class Target:
    """Where one LoKr module lands: a tensor, and a block of its rows (TE2 q/k/v)."""

    key: str
    rows: slice | None = None


def kohya_targets(shapes: dict[str, tuple[int, ...]]) -> dict[str, Target]:
    """kohya module name -> its tensor, for every weight of an SGM checkpoint's key set."""
    out: dict[str, Target] = {}
    for key, shape in shapes.items():
        if key.startswith(UNET) and key.endswith(".weight"):
            out["lora_unet_" + _under(key[len(UNET) : -len(".weight")])] = Target(key)
        elif key.startswith(TE1) and key.endswith(".weight"):
            path = key[len(TE1) : -len(".weight")]
            out["lora_te1_" + _under(path)] = Target(key)
        elif key.startswith(TE2_BLOCKS):
            out |= _te2_targets(key, shape)
    return out


def _under(path: str) -> str:
    return path.replace(".", "_")


def diffusers_targets(shapes: dict[str, tuple[int, ...]], layout: UnetLayout) -> dict[str, Target]:
    """kohya module name -> its tensor, for the weights of a diffusers folder's key set
    (`unet/down_blocks.1.attentions.0.proj_in.weight`, `text_encoder/text_model...`): the
    UNet's names through their SGM paths, the text encoders' as they are (kohya keeps
    transformers' names there, with the `text_model.` level)."""
    out: dict[str, Target] = {}
    for key in shapes:
        component, _, name = key.partition("/")
        if component not in DIFFUSERS_PREFIXES or not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        if component == "unet":
            try:
                module = sgm_module_path(module, layout)
            except ValueError:
                continue
        elif not module.startswith(("text_model.", "text_projection")):
            module = "text_model." + module  # transformers 5 saves CLIPTextModel without it
        out[f"{DIFFUSERS_PREFIXES[component]}_{_under(module)}"] = Target(key)
    return out


def _te2_targets(key: str, shape: tuple[int, ...]) -> dict[str, Target]:
    block, _, rest = key[len(TE2_BLOCKS) :].partition(".")
    pre = f"lora_te2_text_model_encoder_layers_{block}_"
    if rest == "attn.in_proj_weight":
        d = shape[0] // 3
        return {
            f"{pre}self_attn_{p}_proj": Target(key, slice(i * d, (i + 1) * d))
            for i, p in enumerate("qkv")
        }
    for sgm, hf in TE2_LINEAR.items():
        if rest == f"{sgm}.weight":
            return {pre + hf: Target(key)}
    return {}


class LokrDeltas:
    """The LoKr's modules grouped by the tensor they change; `add_to` folds them in. Names
    and shapes are checked from the headers when it opens, before any tensor is written.
    `targets` maps module names to tensors (default: `kohya_targets`, SGM names)."""

    def __init__(
        self,
        path: Path,
        shapes: dict[str, tuple[int, ...]],
        weight: float = 1.0,
        targets: dict[str, Target] | None = None,
    ):
        self.file, self.weight = TensorFile(path), weight
        self.by_key: dict[str, list[tuple[str, Target]]] = defaultdict(list)
        try:
            targets = kohya_targets(shapes) if targets is None else targets
            for module in _modules(self.file, targets):
                _check_shape(self.file, module, targets[module], shapes)
                self.by_key[targets[module].key].append((module, targets[module]))
        except InputError:
            self.file.close()
            raise

    @property
    def prediction(self) -> str | None:
        """What the LoKr was trained to predict (`modelspec.prediction_type`: `epsilon`,
        `v`), when its metadata says."""
        return self.file.header.metadata.get("modelspec.prediction_type")

    @property
    def zero_snr(self) -> bool | None:
        """Whether it was trained on a zero-terminal-SNR schedule (`ss_zero_terminal_snr`),
        when its metadata says (LoKr files from before issue 14 do not)."""
        value = self.file.header.metadata.get(META_ZERO_SNR)
        return None if value is None else value.lower() == "true"

    def add_to(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (float32) plus the deltas of the modules that target `key`, in place."""
        for module, target in self.by_key.get(key, []):
            part = tensor if target.rows is None else tensor[target.rows]
            part.add_(self.delta(module).reshape(part.shape), alpha=self.weight)
        return tensor

    def delta(self, module: str) -> torch.Tensor:
        w1 = self.file.get(f"{module}.lokr_w1").float()
        w2 = self.file.get(f"{module}.lokr_w2").float()
        while w1.dim() < w2.dim():  # conv: w1 is (out, in), w2 (out, in, k, k)
            w1 = w1.unsqueeze(-1)
        return torch.kron(w1, w2)

    def close(self) -> None:
        self.file.close()


def _modules(file: TensorFile, targets: dict[str, Target]) -> list[str]:
    """Module names, each checked to be a full-matrix LoKr with a tensor to change."""
    parts: dict[str, set[str]] = defaultdict(set)
    for name in file.header.specs:
        module, _, leaf = name.partition(".")
        parts[module].add(leaf)
    for module, leaves in parts.items():
        if not {"lokr_w1", "lokr_w2"} <= leaves or leaves - FULL:
            raise InputError(
                f"LoKr {file.path}: module {module} has {sorted(leaves)}; only "
                "full-matrix LoKr (lokr_w1 + lokr_w2, as kohaku trains) merges"
            )
    unknown = sorted(m for m in parts if m not in targets)
    if unknown:
        raise InputError(
            f"LoKr {file.path}: {len(unknown)} modules have no tensor in the merged "
            f"model, e.g. {unknown[:3]} (kohya-layout SDXL names expected)"
        )
    return sorted(parts)


def _check_shape(
    file: TensorFile, module: str, target: Target, shapes: dict[str, tuple[int, ...]]
) -> None:
    """kron(w1, w2) must hold as many numbers as the weight (or rows) it changes."""
    w1 = file.header.specs[f"{module}.lokr_w1"].shape
    w2 = file.header.specs[f"{module}.lokr_w2"].shape
    w1 = w1 + (1,) * (len(w2) - len(w1))
    rebuilt = tuple(a * b for a, b in zip(w1, w2, strict=False))
    shape = shapes[target.key]
    if target.rows is not None:
        shape = (target.rows.stop - target.rows.start, *shape[1:])
    if math.prod(rebuilt) != math.prod(shape):
        rows = "" if target.rows is None else f" rows {target.rows.start}:{target.rows.stop}"
        raise InputError(
            f"LoKr {file.path}: module {module} rebuilds {rebuilt}, but tensor "
            f"{target.key}{rows} is {shape}"
        )
