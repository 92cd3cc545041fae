"""SDXL written out: a diffusers folder or an SGM single file, in fp32, fp16, bf16 or fp8.

Reads loaded models (`kohaku.sdxl.model.SDXLParts`). Writes a diffusers folder
(`save_diffusers`) or an SGM single file (`save_single_file`: the layout A1111, ComfyUI and
kohya read; the official file's two unused extras, TE1's position ids and TE2's logit scale,
are left out as diffusers' converter leaves them), in float32, float16, bfloat16 or
float8_e4m3fn, each under a temporary name renamed into place.

A single file records in its metadata the configs of its models and schedule and its
tokenizers (`kohaku.sdxl.*`, "clip" for SDXL's own), so that kohaku reloads a file of any
shape (the tiny test model too) with nothing beside it; a v-prediction model gets
ComfyUI's `v_pred` marker (and `ztsnr` for a zero-terminal-SNR schedule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from kohaku.sdxl.configs import MODELS, SDXLConfigs
from kohaku.sdxl.layout import full_name, sgm_state
from kohaku.sdxl.tokenizers import tokenizer_spec
from kohaku.stage import atomic_path

if TYPE_CHECKING:
    from kohaku.sdxl.parts import SDXLParts

FP8_MAX = 448.0  # largest finite float8_e4m3fn; larger values would turn into NaN
SAVE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn)
META_CONFIGS, META_TOKENIZERS = "kohaku.sdxl.configs", "kohaku.sdxl.tokenizers"


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


def with_text_model(state: dict[str, Any]) -> dict[str, Any]:
    """Transformers 5 flattened CLIPTextModel; files keep the `text_model.` keys everyone reads."""
    return {full_name(k): v for k, v in state.items()}


def save_diffusers(parts: SDXLParts, out_dir: Path, dtype: torch.dtype) -> Path:
    """Write a diffusers SDXL folder (safetensors in `dtype`); replaces `out_dir` atomically."""
    from diffusers import EulerDiscreteScheduler

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


def save_tokenizer(tokenizer: Any, out_dir: Path) -> None:
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
    models = {name: getattr(parts, name) for name in MODELS}
    tensors = sgm_state(models) | markers(parts.noise_scheduler.config)
    save_tensors(tensors, path, dtype, single_file_metadata(parts))
    return path


def markers(scheduler: Any) -> dict[str, torch.Tensor]:
    """ComfyUI's v-prediction and zero-terminal-SNR markers: empty tensors by name."""
    out = {}
    if scheduler.prediction_type == "v_prediction":
        out["v_pred"] = torch.tensor([])
        if scheduler.get("rescale_betas_zero_snr"):
            out["ztsnr"] = torch.tensor([])
    return out


def single_file_metadata(parts: SDXLParts) -> dict[str, str]:
    configs = SDXLConfigs.of({name: getattr(parts, name) for name in MODELS},
                             parts.noise_scheduler)  # fmt: skip
    specs = [tokenizer_spec(parts.tokenizer), tokenizer_spec(parts.tokenizer_2)]
    return {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        META_CONFIGS: configs.to_json(),
        META_TOKENIZERS: json.dumps(specs, ensure_ascii=False),
    }
