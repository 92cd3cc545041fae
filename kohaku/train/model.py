"""SDXL checkpoints in and out: validate a path, load the seven parts, save them back.

Reads a diffusers SDXL folder (`model_index.json` + unet, vae, text_encoder, text_encoder_2,
tokenizer, tokenizer_2, scheduler) or an original-layout (SGM) single-file `.safetensors`
checkpoint together with a local diffusers folder that gives its configs and tokenizers
(nothing is downloaded). Pickle checkpoints (`.ckpt`, `.pt`, `.bin`, `.pth`) are refused
unless asked for, since unpickling runs code. `check_model_path` reads only configs and
safetensors headers, so a wrong path fails before any tensor is allocated.

Writes a diffusers folder (`save_diffusers`) or an SGM single file (`save_single_file`, the
layout A1111, ComfyUI and kohya read: `model.diffusion_model.*`, `first_stage_model.*`,
`conditioner.embedders.0.transformer.text_model.*`, `conditioner.embedders.1.model.*`) in
float32, float16, bfloat16 or float8_e4m3fn storage, each written under a temporary name and
renamed into place.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from kohaku.errors import InputError
from kohaku.stage import atomic_path

log = logging.getLogger(__name__)

MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")
COMPONENT_FILES = {  # component folder -> the file its loader cannot do without
    **dict.fromkeys(MODELS, "config.json"),
    **dict.fromkeys(("tokenizer", "tokenizer_2"), "tokenizer_config.json"),
    "scheduler": "scheduler_config.json",
}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".bin", ".pth"}
SGM_PREFIXES = {  # single-file key prefix -> the part it holds
    "model.diffusion_model.": "the UNet",
    "first_stage_model.": "the VAE",
    "conditioner.embedders.0.transformer.": "text encoder 1 (CLIP ViT-L)",
    "conditioner.embedders.1.model.": "text encoder 2 (OpenCLIP bigG)",
}
FP8_MAX = 448.0  # largest finite float8_e4m3fn; larger values would turn into NaN
SAVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn)


@dataclass
class SDXLParts:
    """The seven parts of SDXL as loaded torch modules, tokenizers and the training scheduler."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    noise_scheduler: DDPMScheduler


@dataclass(frozen=True)
class ModelSource:
    """A checked model path: a diffusers folder, or a single file plus its config folder."""

    path: Path
    kind: Literal["diffusers", "single_file"]
    config_dir: Path | None = None
    allow_pickle: bool = False


# ---------------------------------------------------------------------------- checking


def check_model_path(
    path: Path, allow_pickle: bool = False, config_dir: Path | None = None
) -> ModelSource:
    """Validate an SDXL checkpoint from configs and headers only; raise `InputError` if unfit."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"model path {path} does not exist")
    if path.is_dir():
        check_diffusers_dir(path, allow_pickle, need_weights=True)
        return ModelSource(path, "diffusers", None, allow_pickle)
    check_single_file(path, allow_pickle)
    if config_dir is None:
        raise InputError(
            f"{path} is a single-file checkpoint: set config_dir to a local SDXL diffusers folder "
            "(its configs and tokenizers are used; nothing is downloaded)"
        )
    config_dir = Path(config_dir).expanduser()
    if not config_dir.is_dir():
        raise InputError(f"config_dir {config_dir} is not a folder")
    check_diffusers_dir(config_dir, allow_pickle, need_weights=False)
    if path.suffix == ".safetensors":
        check_file_matches_config(path, config_dir)
    return ModelSource(path, "single_file", config_dir, allow_pickle)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from e


def check_diffusers_dir(path: Path, allow_pickle: bool, need_weights: bool) -> None:
    """model_index.json, SDXL shape (two text encoders, text_time UNet), the 7 parts."""
    if not (path / "model_index.json").is_file():
        raise InputError(f"{path} is not a diffusers model folder: model_index.json is missing")
    index = read_json(path / "model_index.json")
    if "text_encoder_2" not in index:
        raise InputError(
            f"{path} is not SDXL: model_index.json ({index.get('_class_name')}) has no "
            "text_encoder_2; a checkpoint of another architecture (SD 1.x/2.x?)"
        )
    missing = [f"{c}/{f}" for c, f in COMPONENT_FILES.items() if not (path / c / f).is_file()]
    if missing:
        raise InputError(f"{path} lacks SDXL component files: {', '.join(missing)}")
    embed = read_json(path / "unet" / "config.json").get("addition_embed_type")
    if embed != "text_time":
        raise InputError(
            f"{path} is not SDXL: unet/config.json has addition_embed_type={embed!r}, "
            "SDXL's is 'text_time'"
        )
    if need_weights:
        for name in MODELS:
            check_weights(path / name, allow_pickle)


def check_weights(folder: Path, allow_pickle: bool) -> None:
    names = sorted(p.name for p in folder.iterdir())
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = [n for n in names if Path(n).suffix in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        raise InputError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}): loading them can run "
            "code; convert them to safetensors, or set allow_pickle if you trust the source"
        )
    if not pickles:
        raise InputError(f"{folder} has no weights (*.safetensors)")


def check_single_file(path: Path, allow_pickle: bool) -> None:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise InputError(
                f"{path} is a pickle checkpoint ({suffix}): loading it can run code; convert it "
                "to .safetensors, or set allow_pickle if you trust the source"
            )
        log.warning("%s is a pickle: its architecture is checked only when it loads", path)
        return
    if suffix != ".safetensors":
        raise InputError(f"{path}: expected a .safetensors file or a diffusers folder")
    check_sgm_keys(path, list(header_shapes(path)))


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the safetensors header; no tensor is read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = f.keys()  # safe_open is not iterable
            return {k: tuple(f.get_slice(k).get_shape()) for k in names}
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise InputError(f"{path} is not a readable safetensors file: {e}") from e


def check_sgm_keys(path: Path, keys: list[str]) -> None:
    if not any(k.startswith("conditioner.embedders.1.") for k in keys):
        seen = sorted({".".join(k.split(".")[:2]) for k in keys})[:6]
        raise InputError(
            f"{path} is not SDXL: it has no conditioner.embedders.1 (OpenCLIP bigG) tensors "
            f"(key prefixes: {', '.join(seen)}); a checkpoint of another architecture?"
        )
    for prefix, part in SGM_PREFIXES.items():
        if not any(k.startswith(prefix) for k in keys):
            raise InputError(f"{path} lacks {part} ({prefix}* tensors); SDXL needs all four")


def check_file_matches_config(path: Path, config_dir: Path) -> None:
    """Every tensor config_dir's models need must be in the file, in that shape: diffusers'
    single-file loader leaves what a file lacks random (or crashes on meta tensors when
    accelerate is installed). The models are built on the meta device: nothing allocated."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            load_config(UNet2DConditionModel, config_dir, "unet")
        )
        vae = AutoencoderKL.from_config(load_config(AutoencoderKL, config_dir, "vae"))
        te1 = CLIPTextModel(text_config(config_dir, "text_encoder"))
        te2 = CLIPTextModelWithProjection(text_config(config_dir, "text_encoder_2"))
    want = sgm_state({"unet": unet, "vae": vae, "text_encoder": te1, "text_encoder_2": te2})
    have = header_shapes(path)
    missing = [k for k in want if k not in have]
    if missing:
        raise InputError(f"{path} lacks {len(missing)} SDXL tensors, e.g. {missing[:3]}")
    wrong = [f"{k} {have[k]} (config_dir: {tuple(v.shape)})" for k, v in want.items()
             if squeeze(have[k]) != squeeze(tuple(v.shape))]  # fmt: skip
    if wrong:
        raise InputError(f"config_dir {config_dir} does not describe {path}: {wrong[:3]}")


def load_config(cls: Any, folder: Path, subfolder: str) -> dict[str, Any]:
    return cls.load_config(folder, subfolder=subfolder, local_files_only=True)


def text_config(folder: Path, subfolder: str) -> CLIPTextConfig:
    return CLIPTextConfig.from_pretrained(folder, subfolder=subfolder, local_files_only=True)


def squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Trailing 1s dropped: VAE attention is stored as [C, C, 1, 1] or as [C, C]."""
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


# ---------------------------------------------------------------------------- loading


def load_sdxl(source: ModelSource, dtype: torch.dtype = torch.float32) -> SDXLParts:
    """Load a checked source in `dtype` (float8 files are upcast); modules are in eval mode."""
    if source.kind == "diffusers":
        return load_diffusers(source.path, dtype, source.allow_pickle)
    assert source.config_dir is not None, "check_model_path sets config_dir for single files"
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(source.path), config=str(source.config_dir), local_files_only=True, torch_dtype=dtype
    )
    return SDXLParts(
        **{name: getattr(pipe, name) for name in (*MODELS, "tokenizer", "tokenizer_2")},
        noise_scheduler=DDPMScheduler.from_pretrained(
            source.config_dir, subfolder="scheduler", local_files_only=True
        ),
    )


def load_diffusers(path: Path, dtype: torch.dtype, allow_pickle: bool) -> SDXLParts:
    # torch_dtype upcasts float8 files; transformers 5 also takes it (as an alias of `dtype`)
    kw: dict[str, Any] = {"local_files_only": True, "torch_dtype": dtype}
    kw["use_safetensors"] = None if allow_pickle else True
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    te1 = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
    te2 = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw)
    return SDXLParts(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=te1.eval(),
        text_encoder_2=te2.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
        tokenizer_2=CLIPTokenizer.from_pretrained(
            path, subfolder="tokenizer_2", local_files_only=True
        ),
        noise_scheduler=DDPMScheduler.from_pretrained(
            path, subfolder="scheduler", local_files_only=True
        ),
    )


def text_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """The token + position embedding module, wherever this transformers version puts it."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "embeddings" and hasattr(module, "token_embedding"):
            return module
    raise ValueError(f"{type(model).__name__} has no text embeddings module")


@torch.no_grad()
def restore_embeddings(parts: SDXLParts, reference: SDXLParts) -> None:
    """Copy both text encoders' token and position embeddings from `reference`, in place."""
    for name in ("text_encoder", "text_encoder_2"):
        dst, src = text_embeddings(getattr(parts, name)), text_embeddings(getattr(reference, name))
        for table in ("token_embedding", "position_embedding"):
            d, s = getattr(dst, table).weight, getattr(src, table).weight
            if d.shape != s.shape:
                raise InputError(f"{name} {table}: reference {tuple(s.shape)} != {tuple(d.shape)}")
            d.copy_(s.to(device=d.device, dtype=d.dtype))


# ---------------------------------------------------------------------------- saving


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float tensors to `dtype` (clamped into float8's range); others unchanged."""
    if not tensor.is_floating_point():
        return tensor.contiguous()
    if dtype == torch.float8_e4m3fn:
        tensor = tensor.float().clamp(-FP8_MAX, FP8_MAX)
    return tensor.detach().to("cpu", dtype).contiguous()


def save_tensors(
    tensors: dict[str, torch.Tensor], path: Path, dtype: torch.dtype, meta: dict[str, str]
) -> None:
    """One safetensors file, written under a temporary name and renamed into place."""
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"cannot save in {dtype}; choose one of {SAVE_DTYPES}")
    with atomic_path(path) as tmp:
        save_file({k: cast(v, dtype) for k, v in tensors.items()}, str(tmp), metadata=meta)


def with_text_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transformers 5 flattened CLIPTextModel; files keep the `text_model.` keys everyone reads."""
    keep = ("text_model.", "text_projection.")
    return {k if k.startswith(keep) else f"text_model.{k}": v for k, v in state.items()}


def save_diffusers(parts: SDXLParts, out_dir: Path, dtype: torch.dtype) -> Path:
    """Write a diffusers SDXL folder (safetensors in `dtype`); replaces `out_dir` atomically."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        for name in MODELS:
            save_model(getattr(parts, name), tmp / name, dtype)
        for name in ("tokenizer", "tokenizer_2"):
            save_tokenizer(getattr(parts, name), tmp / name)
        # SDXL 1.0's inference default; training reads the same config as a DDPMScheduler
        scheduler = EulerDiscreteScheduler.from_config(parts.noise_scheduler.config)
        scheduler.save_config(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps(model_index(parts), indent=2))
    return out_dir


def save_model(model: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """Config and weights under the names diffusers or transformers look for."""
    meta = {"format": "pt"}
    if hasattr(model, "save_config"):  # a diffusers model
        model.save_config(folder)
        save_tensors(
            model.state_dict(), folder / "diffusion_pytorch_model.safetensors", dtype, meta
        )
    else:
        model.config.save_pretrained(folder)
        save_tensors(with_text_model(model.state_dict()), folder / "model.safetensors", dtype, meta)


def save_tokenizer(tokenizer: CLIPTokenizer, out_dir: Path) -> None:
    """save_pretrained, plus vocab.json + merges.txt where it writes only tokenizer.json
    (transformers 5), so that transformers 4's CLIPTokenizer reads the folder too."""
    tokenizer.save_pretrained(out_dir)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not (out_dir / "vocab.json").exists():
        backend.model.save(str(out_dir))


def model_index(parts: SDXLParts) -> dict[str, Any]:
    import diffusers

    def entry(obj: object) -> list[str]:
        return [type(obj).__module__.split(".")[0], type(obj).__name__]

    index: dict[str, Any] = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "force_zeros_for_empty_prompt": True,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }
    for name in (*MODELS, "tokenizer", "tokenizer_2"):
        index[name] = entry(getattr(parts, name))
    return index


def save_single_file(parts: SDXLParts, path: Path, dtype: torch.dtype) -> Path:
    """Write an SGM-layout SDXL `.safetensors` (what A1111/ComfyUI/kohya load), atomically."""
    path = Path(path)
    meta = {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    }
    save_tensors(sgm_state({name: getattr(parts, name) for name in MODELS}), path, dtype, meta)
    return path


def sgm_state(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The four models' tensors (`MODELS` -> module) under their SGM single-file names."""
    state = {}
    for prefix, name, convert in (
        ("model.diffusion_model.", "unet", unet_to_sgm),
        ("first_stage_model.", "vae", vae_to_sgm),
        ("conditioner.embedders.0.transformer.", "text_encoder", lambda s, c: with_text_model(s)),
        ("conditioner.embedders.1.model.", "text_encoder_2", openclip_to_sgm),
    ):
        model = models[name]
        state |= {prefix + k: v for k, v in convert(model.state_dict(), model.config).items()}
    return state


# ------------------------------------------------------- diffusers -> SGM key layout
# After diffusers' scripts/convert_diffusers_to_original_sdxl.py, but derived from the
# config (any number of blocks and layers_per_block) instead of SDXL's hard-coded counts,
# and strict: a key with no mapping raises instead of being written under its old name.

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


def unet_to_sgm(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    prefixes = unet_prefixes(config)
    resnet = tuple(p for p in prefixes if ".resnets." in p)
    return {rename(k, prefixes, UNET_RESNET if k.startswith(resnet) else {}): v
            for k, v in state.items()}  # fmt: skip


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


def vae_to_sgm(vae_state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """SGM's VAE attention is 1x1 convolutions where diffusers has linear layers."""
    prefixes, state = vae_prefixes(config), {}
    for key, value in vae_state.items():
        if ".attentions." in key:
            key = rename(key, prefixes, VAE_ATTN)
            value = value[..., None, None] if value.ndim == 2 else value
        else:
            key = rename(key, prefixes, {"conv_shortcut": "nin_shortcut"})
        state[key] = value
    return state


OPENCLIP_INNER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def openclip_to_sgm(te_state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """TE2 in OpenCLIP names: fused q/k/v `in_proj`, `text_projection` stored transposed."""
    state = with_text_model(te_state)
    out = {
        "token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": state.pop("text_model.final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,
    }
    layers = config.num_hidden_layers
    prefixes = {
        f"text_model.encoder.layers.{i}.": f"transformer.resblocks.{i}." for i in range(layers)
    }
    for i in range(layers):
        pre = f"text_model.encoder.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{pre}{p}_proj.{kind}") for p in "qkv"]
            out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(qkv)
    for key, value in state.items():
        if not key.endswith("position_ids"):
            out[rename(key, prefixes, OPENCLIP_INNER)] = value
    return out
