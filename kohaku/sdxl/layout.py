"""Tensor names of SDXL in two layouts: diffusers/transformers modules and the original SGM
single file (`model.diffusion_model.*`, `first_stage_model.*`,
`conditioner.embedders.0.transformer.text_model.*`, `conditioner.embedders.1.model.*`).

Reads and writes nothing. One table, used both ways: `sgm_plan` says, for every SGM tensor,
which module tensors it is made of and how (`Piece`); `to_sgm` builds an SGM tensor from
them (saving, merging) and `from_sgm` splits one back (loading). The table is derived from
the models' configs (any number of blocks, layers and layers per block) and strict: a name
with no mapping raises instead of passing through under its old name.

After diffusers' scripts/convert_diffusers_to_original_sdxl.py. Differences in kind: SGM's
VAE attention is 1x1 convolutions where diffusers has linear layers, and OpenCLIP (text
encoder 2) keeps q/k/v fused in one `in_proj` and stores `text_projection` transposed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

PARTS = {  # model -> its SGM key prefix
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "conditioner.embedders.0.transformer.",
    "text_encoder_2": "conditioner.embedders.1.model.",
}
# SGM tensors no module parameter holds: TE1's int64 position ids (transformers rebuilds
# them as a buffer) and OpenCLIP's contrastive temperature (SDXL never reads it). Loading
# skips them; `sgm_state(extras=True)` makes them (a full official key set, for benchmarks).
EXTRAS = {
    PARTS["text_encoder"] + "text_model.embeddings.position_ids": "text_encoder",
    PARTS["text_encoder_2"] + "logit_scale": "text_encoder_2",
}
LOGIT_SCALE = math.log(100.0)  # OpenCLIP clamps the learned temperature at 100
# ComfyUI's markers of a v-prediction / zero-terminal-SNR single file (empty tensors)
MARKERS = ("v_pred", "ztsnr")

Op = Literal["same", "conv", "transpose", "cat"]


@dataclass(frozen=True)
class Piece:
    """One SGM tensor: made from `names` (state-dict names) of `model` by `op`."""

    model: str
    names: tuple[str, ...]
    op: Op = "same"


def to_sgm(piece: Piece, tensors: list[Any]) -> Any:
    """The SGM tensor from the module tensors (real, meta or lazy ones)."""
    if piece.op == "cat":
        return torch.cat(tensors)
    (t,) = tensors
    if piece.op == "conv":
        return t[..., None, None]
    return t.T if piece.op == "transpose" else t


def from_sgm(piece: Piece, tensor: torch.Tensor) -> list[torch.Tensor]:
    """The module tensors (views) of an SGM tensor, in the order of `piece.names`."""
    if piece.op == "cat":
        return list(tensor.chunk(len(piece.names)))
    if piece.op == "conv":  # [C, C, 1, 1] in SGM files; some store [C, C]
        return [tensor.reshape(tensor.shape[:2])]
    return [tensor.T if piece.op == "transpose" else tensor]


def sgm_plan(models: dict[str, Any]) -> dict[str, Piece]:
    """Every SGM tensor of the four models (name -> module with `state_dict()`, `config`)."""
    plan: dict[str, Piece] = {}
    builders = {"unet": unet_plan, "vae": vae_plan, "text_encoder": clip_plan,
                "text_encoder_2": openclip_plan}  # fmt: skip
    for name, build in builders.items():
        model = models[name]
        for key, (names, op) in build(model.state_dict(), model.config).items():
            plan[PARTS[name] + key] = Piece(name, names, op)
    return plan


def sgm_state(models: dict[str, Any], extras: bool = False) -> dict[str, Any]:
    """The four models' tensors under their SGM names (`extras`: with position ids and
    logit scale, as the official file has them)."""
    states = {name: model.state_dict() for name, model in models.items()}
    out = {key: to_sgm(p, [states[p.model][n] for n in p.names])
           for key, p in sgm_plan(models).items()}  # fmt: skip
    if extras:
        out |= extra_tensors(models["text_encoder"].config)
    return out


def extra_tensors(te1_config: Any) -> dict[str, torch.Tensor]:
    positions = torch.arange(te1_config.max_position_embeddings, dtype=torch.int64)[None]
    ids, scale = EXTRAS
    return {ids: positions, scale: torch.tensor(LOGIT_SCALE)}


# ---------------------------------------------------------------------------- the UNet

UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_prefixes(config: Any) -> dict[str, str]:
    """diffusers block prefix -> SGM prefix (`input_blocks.N.M.`, `output_blocks.N.M.`)."""
    per, n = config.layers_per_block, len(config.block_out_channels)
    out = dict(UNET_TOP)
    for i in range(n):
        for j in range(per):
            k = 1 + i * (per + 1) + j
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{k}.0."
            out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{k}.1."
        for j in range(per + 1):
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (per + 1) + j}.0."
            out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (per + 1) + j}.1."
        if i < n - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = (
                f"input_blocks.{(i + 1) * (per + 1)}.0.op."
            )
            slot = 2 if config.up_block_types[i].startswith("CrossAttn") else 1
            out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (per + 1) + per}.{slot}."
    out |= {"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1."}
    out["mid_block.resnets.1."] = "middle_block.2."
    return out


def rename(key: str, prefixes: dict[str, str], inner: dict[str, str]) -> str:
    """Swap the longest matching block prefix, then rename whole names inside via `inner`."""
    match = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
    if match is None:
        raise ValueError(f"no SGM name for {key!r}")
    rest = "." + key[len(match) :]
    for old, new in inner.items():
        rest = rest.replace(f".{old}.", f".{new}.", 1)
    return prefixes[match] + rest[1:]


Plan = dict[str, tuple[tuple[str, ...], Op]]  # SGM key (no part prefix) -> names, op


def unet_plan(state: dict[str, Any], config: Any) -> Plan:
    prefixes = unet_prefixes(config)
    resnet = tuple(p for p in prefixes if ".resnets." in p)
    return {rename(k, prefixes, UNET_RESNET if k.startswith(resnet) else {}): ((k,), "same")
            for k in state}  # fmt: skip


# ---------------------------------------------------------------------------- the VAE


def vae_prefixes(config: Any) -> dict[str, str]:
    n = len(config.block_out_channels)
    out = {f"{side}.{name}.": f"{side}.{name}." for side in ("encoder", "decoder")
           for name in ("conv_in", "conv_out")}  # fmt: skip
    out |= {f"{s}.conv_norm_out.": f"{s}.norm_out." for s in ("encoder", "decoder")}
    out |= {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for side in ("encoder", "decoder"):
        out[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
        for k in range(2):
            out[f"{side}.mid_block.resnets.{k}."] = f"{side}.mid.block_{k + 1}."
    for i in range(n):
        out[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        out[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        out[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{n - 1 - i}.block."
        out[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    return out


def vae_plan(state: dict[str, Any], config: Any) -> Plan:
    """Attention weights are 1x1 convolutions in SGM, linear layers in diffusers."""
    prefixes, plan = vae_prefixes(config), {}
    for key, value in state.items():
        if ".attentions." in key:
            plan[rename(key, prefixes, VAE_ATTN)] = ((key,), "conv" if value.ndim == 2 else "same")
        else:
            plan[rename(key, prefixes, {"conv_shortcut": "nin_shortcut"})] = ((key,), "same")
    return plan


# ---------------------------------------------------------------------------- text encoders

KEEP = ("text_model.", "text_projection.")


def full_name(key: str) -> str:
    """Transformers 5 flattened CLIPTextModel; files keep the `text_model.` keys everyone
    reads."""
    return key if key.startswith(KEEP) else f"text_model.{key}"


def clip_plan(state: dict[str, Any], config: Any) -> Plan:
    """Text encoder 1 is stored as transformers' CLIPTextModel, under `text_model.`."""
    return {full_name(k): ((k,), "same") for k in state if not k.endswith("position_ids")}


OPENCLIP_INNER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}


def openclip_plan(state: dict[str, Any], config: Any) -> Plan:
    """Text encoder 2 in OpenCLIP names: fused q/k/v `in_proj`, `text_projection` transposed."""
    names = {full_name(k): k for k in state if not k.endswith("position_ids")}
    plan: Plan = {}
    for i in range(config.num_hidden_layers):
        pre = f"text_model.encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            qkv = tuple(names.pop(f"{pre}{p}_proj.{kind}") for p in "qkv")
            plan[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = (qkv, "cat")
    plan["text_projection"] = ((names.pop("text_projection.weight"),), "transpose")
    prefixes = {f"text_model.encoder.layers.{i}.": f"transformer.resblocks.{i}."
                for i in range(config.num_hidden_layers)}  # fmt: skip
    for full, key in names.items():
        sgm = OPENCLIP_TOP.get(full) or rename(full, prefixes, OPENCLIP_INNER)
        plan[sgm] = ((key,), "same")
    return plan
