"""Run a merge recipe, one tensor at a time.

Reads the recipe's models (SGM single files or diffusers folders, see `sources`) and its
LoKr files (folded in in order, `lokr.open_lokrs`). Writes `recipe.output`, an SGM
single-file `.safetensors` (temporary name, then renamed) with every key of the anchor
model (`position_ids`, `logit_scale`, `v_pred` / `ztsnr` markers included; the markers a
v-prediction or zero-terminal-SNR result lacks are added), ModelSpec metadata (the
anchor's, SDXL's required keys where it has none, the prediction type) and the recipe
(`kohaku_merge`).

Per output tensor: the inputs are read, summed in float32 with the recipe's coefficients
(per UNet block under MBW; the reference model's alone for restored embeddings), the LoKr
delta added, cast to the output dtype and written; memory holds a few tensors at a time.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from kohaku.errors import ConfigError, InputError
from kohaku.merge.config import Coefficients, MbwWeights, MergeRecipe, blend
from kohaku.merge.sources import ModelTensors, open_model
from kohaku.sdxl.lokr import META_ZERO_SNR
from kohaku.sdxl.lokr_deltas import LokrDeltas, open_lokrs
from kohaku.sdxl.schedule import Schedule, combine_schedule
from kohaku.sdxl.tensors import OutSpec, Scratch, write_safetensors

log = logging.getLogger(__name__)

DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn,
}
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448; larger values would turn into NaN
EMBEDDINGS = (  # the text encoders' token and position embeddings, SGM names
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
    "conditioner.embedders.1.model.token_embedding.weight",
    "conditioner.embedders.1.model.positional_embedding",
)
CHUNK = 1 << 22  # values cast to float32 at a time (16 MiB)
SDXL_SPEC = {  # ModelSpec's required keys for an SDXL checkpoint, as SGM files carry them
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": "stable-diffusion-xl-v1-base",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
}
# the marker keys of a v-prediction and of a zero-terminal-SNR checkpoint (empty tensors):
# ComfyUI reads `ztsnr` beside `v_pred` (supported_models.SDXL.model_type), A1111 (dev) and
# Forge read both keys too
V_PRED, ZTSNR = "v_pred", "ztsnr"
BLOCK = re.compile(r"model\.diffusion_model\.(input_blocks|middle_block|output_blocks)\.(\d+)\.")


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: its name, dtype and shape, and the weighted inputs that make it."""

    out: OutSpec
    terms: tuple[tuple[str, float], ...]  # (model name, coefficient)
    is_float: bool
    source: str | None = None  # the key the inputs and the LoKr know it by (default: out.name)

    @property
    def key(self) -> str:
        return self.out.name if self.source is None else self.source


@dataclass(frozen=True)
class MergeResult:
    output: Path
    tensors: int
    bytes: int
    seconds: float
    coefficients: Coefficients


def merge(recipe: MergeRecipe, threads: int = 1) -> MergeResult:
    """Write the merged model; every input is checked (names, shapes) before any is read.

    `threads`: torch threads for the arithmetic, restored after. One by default: the work is
    bound by memory and disk, and on a busy machine extra threads only spin (half-size SDXL
    on this 2-core machine under load: 97 s wall and 51 s CPU with 2 threads, 24 s and 14 s
    with one)."""
    start = time.perf_counter()
    warn_if_rescaled(recipe)
    models = open_models(recipe)
    deltas, before = None, torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plan = plan_merge(recipe, models)
        if recipe.lokrs:
            shapes = {p.out.name: p.out.shape for p in plan}
            deltas = open_lokrs([(x.file, x.weight) for x in recipe.lokrs], shapes)
        base = models[anchor(recipe)]
        schedule = merged_schedule(base, deltas)
        plan += markers(base, schedule, DTYPES[recipe.dtype])
        write_plan(recipe.output, plan, models, deltas, metadata(recipe, base, schedule))
    finally:
        torch.set_num_threads(before)
        for m in models.values():
            m.close()
        if deltas is not None:
            deltas.close()
    seconds = time.perf_counter() - start
    size = recipe.output.stat().st_size
    log.info(
        "merged %d tensors into %s (%.2f GB) in %.1f s",
        len(plan),
        recipe.output,
        size / 1e9,
        seconds,
    )
    return MergeResult(recipe.output, len(plan), size, seconds, recipe.coefficients())


def warn_if_rescaled(recipe: MergeRecipe) -> None:
    """Weights that do not sum to 1 scale every tensor (fine for a difference, rarely
    meant for a model)."""
    total = sum(recipe.coefficients().values())
    if abs(total - 1.0) > 1e-6:
        log.warning(
            "the weights of %r sum to %g, not 1: the result is scaled by that much",
            recipe.expression,
            total,
        )


def open_models(recipe: MergeRecipe) -> dict[str, ModelTensors]:
    """The models the result depends on (a model with coefficient 0 is not opened)."""
    used = set(recipe.coefficients()) | {recipe.restore_embeddings_from, _mbw_base(recipe)}
    models: dict[str, ModelTensors] = {}
    try:
        for name, path in recipe.models.items():
            if name in used:
                models[name] = open_model(name, path)
    except Exception:
        for m in models.values():
            m.close()
        raise
    return models


def _mbw_base(recipe: MergeRecipe) -> str | None:
    return recipe.mbw.base if recipe.mbw else None


def anchor(recipe: MergeRecipe) -> str:
    """The model that gives the output its key set and non-float tensors: the MBW base,
    else the first model the expression names."""
    return _mbw_base(recipe) or next(iter(recipe.coefficients()))


# ---------------------------------------------------------------------------- planning


def plan_merge(recipe: MergeRecipe, models: dict[str, ModelTensors]) -> list[TensorPlan]:
    """Output names, shapes and dtypes, and each tensor's terms; raises on any mismatch."""
    first = models[anchor(recipe)]
    check_keys(first, models.values())
    coefficients = key_coefficients(recipe, first)
    dtype = DTYPES[recipe.dtype]
    plan = []
    for key, lazy in first.tensors.items():
        if not lazy.dtype.is_floating_point:
            plan.append(
                TensorPlan(OutSpec(key, lazy.dtype, lazy.shape), ((first.name, 1.0),), False)
            )
            continue
        terms = tuple(coefficients(key).items())
        check_shapes(key, [models[n] for n, _ in terms], lazy.shape)
        plan.append(TensorPlan(OutSpec(key, dtype, lazy.shape), terms, True))
    return plan


def check_keys(first: ModelTensors, models: Iterable[ModelTensors]) -> None:
    """Every model has the anchor's float tensors, no float tensor the anchor lacks, and
    float tensors where the anchor has them (non-float ones, such as `position_ids`, come
    from the anchor alone)."""
    want = {k for k, v in first.tensors.items() if v.dtype.is_floating_point}
    for m in models:
        have = {k for k, v in m.tensors.items() if v.dtype.is_floating_point}
        for k in sorted(set(m.tensors) & set(first.tensors)):
            a, b = first.tensors[k].dtype, m.tensors[k].dtype
            if a.is_floating_point != b.is_floating_point:
                raise InputError(f"tensor {k} is {a} in model {first.name}, {b} in model {m.name}")
        for missing, holder, lacker in ((want - have, first, m), (have - want, m, first)):
            if missing:
                raise InputError(
                    f"tensor {sorted(missing)[0]} is in model {holder.name} ({holder.path}) but "
                    f"not in model {lacker.name} ({lacker.path}); {len(missing)} such tensors, "
                    f"e.g. {sorted(missing)[:3]}"
                )


def check_shapes(key: str, models: list[ModelTensors], shape: tuple[int, ...]) -> None:
    """Same shape everywhere, up to trailing 1s (VAE attention: [C, C] or [C, C, 1, 1])."""
    for m in models:
        have = m.tensors[key].shape
        if have != shape and _squeeze(have) != _squeeze(shape):
            names = ", ".join(f"{x.name} {x.tensors[key].shape}" for x in models)
            raise InputError(f"tensor {key} has different shapes: {names}")


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def key_coefficients(recipe: MergeRecipe, first: ModelTensors) -> Callable[[str], Coefficients]:
    """key -> {model: coefficient}: the expression, blended per block under MBW, or the
    reference model alone for the restored embeddings."""
    base = recipe.coefficients()
    blocks = mbw_table(recipe.mbw, base, first) if recipe.mbw else {}
    ref = recipe.restore_embeddings_from
    if ref is not None:
        missing = [k for k in EMBEDDINGS if k not in first.tensors]
        if missing:
            raise InputError(
                f"restore_embeddings_from: model {first.name} has no text "
                f"encoder embeddings named {missing[:2]}"
            )

    def coefficients(key: str) -> Coefficients:
        if ref is not None and key in EMBEDDINGS:
            return {ref: 1.0}
        if recipe.mbw is None:
            return base
        return blocks.get(block_of(key), blocks["other"])

    return coefficients


def block_of(key: str) -> str:
    """`input.4`, `middle`, `output.0` for UNet block tensors; `other` for the rest."""
    match = BLOCK.match(key)
    if match is None:
        return "other"
    kind = match[1].split("_")[0]
    return "middle" if kind == "middle" else f"{kind}.{match[2]}"


def mbw_table(
    mbw: MbwWeights, coefficients: Coefficients, first: ModelTensors
) -> dict[str, Coefficients]:
    """Block -> blended coefficients; the weight lists must match the UNet's block counts."""
    found: dict[str, set[int]] = {"input": set(), "output": set()}
    for key in first.tensors:
        kind, _, n = block_of(key).partition(".")
        if kind in found:
            found[kind].add(int(n))
    weights = {"input": mbw.input, "output": mbw.output}
    for kind, numbers in found.items():
        count = max(numbers, default=-1) + 1
        if len(weights[kind]) != count:
            raise ConfigError(
                f"mbw.{kind} has {len(weights[kind])} weights, but model "
                f"{first.name} has {count} UNet {kind} blocks "
                f"({kind}_blocks.0-{count - 1}; SDXL: 9)"
            )
    table = {
        f"{kind}.{i}": blend(coefficients, mbw.base, w)
        for kind, ws in weights.items()
        for i, w in enumerate(ws)
    }
    table["middle"] = blend(coefficients, mbw.base, mbw.middle)
    table["other"] = blend(coefficients, mbw.base, mbw.other)
    return table


# ---------------------------------------------------------------------------- computing


def write_plan(
    path: Path,
    plan: list[TensorPlan],
    models: dict[str, ModelTensors],
    deltas: LokrDeltas | None,
    meta: dict[str, str],
) -> Path:
    """Compute the planned tensors one by one and stream them into `path`."""
    scratch = Scratch()
    tensors = (compute(p, models, deltas, scratch) for p in plan)
    return write_safetensors(path, [p.out for p in plan], tensors, meta)


def compute(
    plan: TensorPlan,
    models: dict[str, ModelTensors],
    deltas: LokrDeltas | None,
    scratch: Scratch,
) -> torch.Tensor:
    """One output tensor, in `scratch`'s buffers: valid until the next call."""
    key, shape = plan.key, plan.out.shape
    if not plan.is_float:
        return models[plan.terms[0][0]].tensors[key].load()
    acc = scratch.tensor("acc", torch.float32, shape)
    for i, (name, c) in enumerate(plan.terms):
        lazy = models[name].tensors[key]
        raw = lazy.load(scratch.bytes("raw", lazy.nbytes)).reshape(shape)
        if i == 0:
            acc.copy_(raw).mul_(c)
        else:
            add_scaled(acc, raw, c, scratch)
    if deltas is not None:
        deltas.add_to(key, acc)
    return cast(acc, plan.out.dtype, scratch)


def add_scaled(acc: torch.Tensor, raw: torch.Tensor, c: float, scratch: Scratch) -> None:
    """acc += c * raw, cast to float32 a chunk at a time: a mixed-dtype `add_` runs ~7x
    slower than a cast then `add_`, and a chunk-sized cast buffer keeps memory flat."""
    if raw.dtype == torch.float32:
        acc.add_(raw, alpha=c)
        return
    flat_acc, flat_raw = acc.view(-1), raw.reshape(-1)
    for s in range(0, flat_acc.numel(), CHUNK):
        part = flat_raw[s : s + CHUNK]
        tmp = scratch.tensor("tmp", torch.float32, tuple(part.shape)).copy_(part)
        flat_acc[s : s + CHUNK].add_(tmp, alpha=c)


def cast(acc: torch.Tensor, dtype: torch.dtype, scratch: Scratch) -> torch.Tensor:
    """`acc` (float32) in `dtype`; into float8 clamped to its finite range."""
    if dtype == torch.float32:
        return acc
    if dtype == torch.float8_e4m3fn:
        acc.clamp_(-FP8_MAX, FP8_MAX)
    return scratch.tensor("out", dtype, tuple(acc.shape)).copy_(acc)


# ---------------------------------------------------------------------------- metadata


def base_prediction(model: ModelTensors) -> str | None:
    """`v` or `epsilon` where the model says (ComfyUI's `v_pred` key, ModelSpec's
    `prediction_type`, a diffusers folder's scheduler), else None."""
    if V_PRED in model.tensors:
        return "v"
    return model.metadata.get("modelspec.prediction_type")


def base_zero_snr(model: ModelTensors) -> bool:
    """A zero-terminal-SNR model: its `ztsnr` key, or a diffusers folder's scheduler config."""
    return ZTSNR in model.tensors or model.metadata.get(META_ZERO_SNR) == "True"


def merged_schedule(base: ModelTensors, deltas: LokrDeltas | None) -> Schedule:
    """The LoKr's prediction type and schedule where it records them (it was trained for
    them), else the base model's, else epsilon: a v-prediction (zero-terminal-SNR) LoKr on a
    base that does not say so marks the result. A base that says v-prediction (zero terminal
    SNR) under a LoKr that says it was trained without is refused: the result would be
    neither."""
    if deltas is None:
        return combine_schedule(base_prediction(base), base_zero_snr(base), None, None, "", "")
    return combine_schedule(base_prediction(base), base_zero_snr(base), deltas.prediction,
                            deltas.zero_snr, f"LoKr {deltas.file.path}",
                            f"model {base.name} ({base.path})")  # fmt: skip


def markers(base: ModelTensors, schedule: Schedule, dtype: torch.dtype) -> list[TensorPlan]:
    """The `v_pred` and `ztsnr` keys clients read, where the result needs them and its base
    lacks them."""
    keys = [V_PRED] if schedule.prediction == "v" else []
    keys += [ZTSNR] if schedule.zero_snr else []
    return [TensorPlan(OutSpec(k, dtype, (0,)), (), True) for k in keys if k not in base.tensors]


def metadata(recipe: MergeRecipe, base: ModelTensors, schedule: Schedule) -> dict[str, str]:
    """ModelSpec: the anchor's entries (SDXL's required ones where it has none), the output's
    title, the prediction type; and the recipe that made this file."""
    own = {k: v for k, v in base.metadata.items() if k.startswith("modelspec.")}
    own.pop("modelspec.hash_sha256", None)  # the anchor's content hash, not this file's
    spec = {**SDXL_SPEC, **own, "modelspec.title": recipe.output.stem,
            "modelspec.prediction_type": schedule.prediction}  # fmt: skip
    return {"format": "pt", **spec, "kohaku_merge": json.dumps(recipe.model_dump(mode="json"))}
