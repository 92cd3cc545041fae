"""A LoKr's weight deltas in the key space of a single-file checkpoint (SGM names) or of a
diffusers folder (`<component>/<key>`).

Reads a LoKr `.safetensors` with kohya-layout module names (`lora_unet_input_blocks_4_1_
proj_in`, `lora_te1_text_model_...`, `lora_te2_text_model_...`, as `kohaku.sdxl.lokr`
writes them) and full Kronecker factors `lokr_w1`, `lokr_w2`. Writes nothing. This is the
one place kohaku folds a LoKr into base weights (merge recipes, `[train.export]`, and a
base loaded with `train.model.lokr` merged in, `kohaku.sdxl.streaming`).

Stacks: a LoKr trained on top of base + an earlier LoKr records that one
(`kohaku_base_lokr`: its file name, sha256 and weight); `open_lokrs` folds several in
order and refuses one whose recorded LoKr is not folded in right before it.

delta W = weight * kron(w1, w2), reshaped to the weight it targets. With both factors full
matrices lycoris uses a scale of 1 and ignores `alpha` (lycoris `LokrModule.__init__`:
"use scale = 1"; ComfyUI's loader does the same, see shared/stack-notes.md). TE2 is stored
in OpenCLIP names, so its q, k and v projections are row blocks of one `in_proj_weight`.
"""

from __future__ import annotations

import functools
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kohaku.errors import InputError
from kohaku.sdxl.lokr import META_ZERO_SNR
from kohaku.sdxl.names import UnetLayout, sgm_module_path  # pure string functions
from kohaku.sdxl.tensors import TensorFile
from kohaku.stage import sha256_file

UNET = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer."
TE2_BLOCKS = "conditioner.embedders.1.model.transformer.resblocks."
TE2_LINEAR = {"attn.out_proj": "self_attn_out_proj", "mlp.c_fc": "mlp_fc1", "mlp.c_proj": "mlp_fc2"}
FULL = {"lokr_w1", "lokr_w2", "alpha"}
# metadata of a LoKr trained on top of base + an earlier LoKr: that LoKr's record (JSON)
META_BASE_LOKR = "kohaku_base_lokr"
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


@dataclass(frozen=True)
class LokrLayer:
    """A LoKr file folded in at a weight, with its content hash: what a LoKr trained on top
    of it records (`record`), so that export and evaluate can apply both, in order."""

    path: Path
    weight: float
    sha256: str

    @classmethod
    def of(cls, path: Path, weight: float = 1.0) -> LokrLayer:
        return cls(Path(path), float(weight), sha256_file(path))

    def record(self) -> dict[str, object]:
        return {"file": self.path.name, "sha256": self.sha256, "weight": self.weight}

    def metadata(self) -> dict[str, str]:
        """The metadata entry of a LoKr trained on top of this one."""
        return {META_BASE_LOKR: json.dumps(self.record())}


class LokrDeltas:
    """The LoKr's modules grouped by the tensor they change; `add_to` folds them in. Names
    and shapes are checked from the headers when it opens, before any tensor is written.
    `targets` maps module names to tensors (default: `kohya_targets`, SGM names). `below`:
    a LoKr folded in before this one (`open_lokrs`); `add_to` adds its deltas first."""

    def __init__(
        self,
        path: Path,
        shapes: dict[str, tuple[int, ...]],
        weight: float = 1.0,
        targets: dict[str, Target] | None = None,
        below: LokrDeltas | None = None,
    ):
        self.file, self.weight, self.below = TensorFile(path), weight, below
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
        `v`), when its metadata says; else what the LoKr below it says."""
        own = self.file.header.metadata.get("modelspec.prediction_type")
        return own if own or self.below is None else self.below.prediction

    @property
    def zero_snr(self) -> bool | None:
        """Whether it was trained on a zero-terminal-SNR schedule (`ss_zero_terminal_snr`),
        when its metadata says (LoKr files from before issue 14 do not); else the LoKr below."""
        value = self.file.header.metadata.get(META_ZERO_SNR)
        if value is None:
            return None if self.below is None else self.below.zero_snr
        return value.lower() == "true"

    @functools.cached_property
    def sha256(self) -> str:
        return sha256_file(self.file.path)

    @property
    def base_record(self) -> dict | None:
        """The LoKr it was trained on top of (file, sha256, weight), when it records one."""
        return base_record(self.file.header.metadata, self.file.path)

    def changes(self, key: str) -> bool:
        """Whether any LoKr of the stack targets `key`."""
        return key in self.by_key or (self.below is not None and self.below.changes(key))

    def add_to(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (float32) plus the deltas of the modules that target `key`, in place:
        the LoKrs below first, in their order."""
        if self.below is not None:
            self.below.add_to(key, tensor)
        for module, target in self.by_key.get(key, []):
            part = tensor if target.rows is None else tensor[target.rows]
            part.add_(self.delta(module).reshape(part.shape), alpha=self.weight)
        return tensor

    def merged(self, key: str, raw: torch.Tensor) -> torch.Tensor:
        """`raw` as a new float32 tensor with the stack's deltas of `key` added (a base
        tensor as it streams in: `raw` may be a reused read buffer)."""
        return self.add_to(key, raw.to(torch.float32, copy=True))

    def delta(self, module: str) -> torch.Tensor:
        w1 = self.file.get(f"{module}.lokr_w1").float()
        w2 = self.file.get(f"{module}.lokr_w2").float()
        while w1.dim() < w2.dim():  # conv: w1 is (out, in), w2 (out, in, k, k)
            w1 = w1.unsqueeze(-1)
        return torch.kron(w1, w2)

    def close(self) -> None:
        self.file.close()
        if self.below is not None:
            self.below.close()


def base_record(metadata: dict[str, str], path: Path) -> dict | None:
    """The LoKr a LoKr file's metadata says it was trained on top of: file, sha256, weight."""
    text = metadata.get(META_BASE_LOKR)
    if text is None:
        return None
    try:
        record = json.loads(text)
        return {"file": str(record["file"]), "sha256": str(record["sha256"]),
                "weight": float(record["weight"])}  # fmt: skip
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"LoKr {path}: unreadable {META_BASE_LOKR} metadata ({e})") from e


def open_lokrs(
    layers: Sequence[tuple[Path, float]],
    shapes: dict[str, tuple[int, ...]],
    targets: dict[str, Target] | None = None,
) -> LokrDeltas | None:
    """The LoKrs `(path, weight)` stacked in order (each checked from its header), the last
    on top; None for none. A LoKr that records the LoKr it was trained on top of must come
    right after that one, at the same weight (`check_trained_on`)."""
    top: LokrDeltas | None = None
    try:
        for path, weight in layers:
            top = LokrDeltas(path, shapes, weight, targets, below=top)
            check_trained_on(top)
    except InputError:
        if top is not None:
            top.close()
        raise
    return top


def check_trained_on(deltas: LokrDeltas) -> None:
    """A LoKr trained on top of base + LoKr A is folded in right after A (same sha256, same
    weight): alone, its deltas would land on weights it was never trained on."""
    record = deltas.base_record
    if record is None:
        return
    below = deltas.below
    trained_on = (f"LoKr {deltas.file.path} was trained on top of LoKr {record['file']} "
                  f"(sha256 {record['sha256'][:16]}, weight {record['weight']:g})")  # fmt: skip
    if below is None:
        raise InputError(f"{trained_on}: fold that one in first (kohaku export "
                         "--base-lokr, train.model.lokr, or before it in a merge recipe's "
                         "[[lokr]] list)")  # fmt: skip
    if below.sha256 != record["sha256"] or below.weight != record["weight"]:
        raise InputError(f"{trained_on}, but the LoKr before it is {below.file.path} "
                         f"(sha256 {below.sha256[:16]}, weight {below.weight:g})")  # fmt: skip


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
