"""SDXL checkpoints in: validate a path from headers and configs, then stream it into
modules in the training precision.

Reads a diffusers SDXL folder (`model_index.json` + unet, vae, text_encoder, text_encoder_2,
tokenizer, tokenizer_2, scheduler) or an original-layout (SGM) single-file `.safetensors`.
A single file needs nothing beside it: its configs come from `config_dir` when given (a
local diffusers folder, for non-standard models), else from the file's own kohaku metadata,
else SDXL 1.0's built-in configs (`kohaku.sdxl.configs`), checked against the file's tensor
shapes; its tokenizers are CLIP's, built from the merges shipped in the package. A
v-prediction file (ComfyUI's `v_pred` key, `ztsnr` for zero-terminal SNR) gets a
v-prediction schedule; a file that says nothing of its schedule (no such key, no kohaku
configs, no `config_dir`) is marked undeclared, so that the train config may name it
(`kohaku.sdxl.schedule.schedule_source`). Pickle checkpoints (`.ckpt`, `.pt`, `.bin`,
`.pth`) are refused unless asked for, since unpickling runs code. `check_model_path` reads
only configs and headers, so a wrong path fails before any tensor is allocated.

Loading builds the modules with empty weights and fills them tensor by tensor (SGM names
converted per tensor, `kohaku.sdxl.layout`), each read with plain file reads into a reused
buffer and copied straight into the target dtype and device: the checkpoint is never held
whole, and nothing of it stays mapped (`kohaku.sdxl.streaming`). A base LoKr
(`train.model.lokr`, `check_model`) is checked from headers against the base's names and
shapes and schedule, then folded into each tensor as it streams in. Writing
(`kohaku.sdxl.saving`) and the embedding tables (`kohaku.sdxl.embeddings`) are
re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kohaku.errors import InputError
from kohaku.sdxl.baselokr import open_base_lokr, with_base_lokr
from kohaku.sdxl.configs import MODELS, SDXLConfigs, empty_models
from kohaku.sdxl.embeddings import (  # noqa: F401  (re-exported)
    embedding_keys,
    embeddings_of,
    locate_embeddings,
    read_embeddings,
    restore_embeddings,
    text_embeddings,
)
from kohaku.sdxl.layout import PARTS, sgm_plan, sgm_state  # noqa: F401  (re-exported)
from kohaku.sdxl.parts import ModelSource, Prediction, SDXLParts  # noqa: F401  (re-exported)
from kohaku.sdxl.saving import (  # noqa: F401  (re-exported: the writers' old home)
    META_CONFIGS,
    META_TOKENIZERS,
    save_diffusers,
    save_single_file,
    save_tensors,
    with_text_model,
)
from kohaku.sdxl.streaming import (
    PICKLE_SUFFIXES,
    check_single_file_suffix,
    fill,
    load_folder,
    open_tensors,
    sgm_shapes,
)
from kohaku.sdxl.tensors import Header, read_header

if TYPE_CHECKING:
    from kohaku.train.config import ModelConfig


COMPONENT_FILES = {  # component folder -> the file its loader cannot do without
    **dict.fromkeys(MODELS, "config.json"),
    **dict.fromkeys(("tokenizer", "tokenizer_2"), "tokenizer_config.json"),
    "scheduler": "scheduler_config.json",
}
SGM_PARTS = {  # single-file key prefix -> the part it holds
    PARTS["unet"]: "the UNet",
    PARTS["vae"]: "the VAE",
    PARTS["text_encoder"]: "text encoder 1 (CLIP ViT-L)",
    PARTS["text_encoder_2"]: "text encoder 2 (OpenCLIP bigG)",
}
EDM_KEYS = ("edm_mean", "edm_vpred.sigma_max")  # Playground v2.5, EDM v-prediction


# ---------------------------------------------------------------------------- checking


def check_model_path(
    path: Path, allow_pickle: bool = False, config_dir: Path | None = None
) -> ModelSource:
    """Validate an SDXL checkpoint from configs and headers only; raise `InputError` if unfit."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"model path {path} does not exist")
    if config_dir is not None:
        config_dir = Path(config_dir).expanduser()
        if not config_dir.is_dir():
            raise InputError(f"config_dir {config_dir} is not a folder")
        check_diffusers_dir(config_dir, allow_pickle, need_weights=False)
    if path.is_dir():
        check_diffusers_dir(path, allow_pickle, need_weights=True)
        configs = folder_configs(path)
        return ModelSource(path, "diffusers", None, allow_pickle, *schedule_prediction(configs),
                           configs=configs)  # fmt: skip
    header = check_single_file(path, allow_pickle)
    if header is None:  # a pickle: checked when it loads
        configs = folder_configs(config_dir) if config_dir else SDXLConfigs.builtin()
        return ModelSource(path, "single_file", config_dir, allow_pickle,
                           *schedule_prediction(configs), declared=config_dir is not None,
                           configs=configs)  # fmt: skip
    configs = single_file_configs(path, header, config_dir)
    check_shapes(path, header, configs, config_dir)
    declared = config_dir is not None or META_CONFIGS in header.metadata or \
        "v_pred" in header.specs  # fmt: skip
    return ModelSource(path, "single_file", config_dir, allow_pickle,
                       *file_prediction(header, configs), declared=declared,
                       configs=configs)  # fmt: skip


def check_model(cfg: ModelConfig) -> ModelSource:
    """`check_model_path` of a model config, with its base LoKr (`lokr`) checked to merge
    (`kohaku.sdxl.baselokr`)."""
    source = check_model_path(cfg.path, cfg.allow_pickle, cfg.config_dir)
    return source if cfg.lokr is None else with_base_lokr(source, cfg.lokr, cfg.lokr_weight)


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


def check_single_file(path: Path, allow_pickle: bool) -> Header | None:
    """The safetensors header of an SGM SDXL file (None for an allowed pickle)."""
    if check_single_file_suffix(path, allow_pickle) == "pickle":
        return None
    header = read_header(path)
    check_sgm_keys(path, list(header.specs))
    return header


def check_sgm_keys(path: Path, keys: list[str]) -> None:
    if not any(k.startswith("conditioner.embedders.1.") for k in keys):
        seen = sorted({".".join(k.split(".")[:2]) for k in keys})[:6]
        raise InputError(
            f"{path} is not SDXL: it has no conditioner.embedders.1 (OpenCLIP bigG) tensors "
            f"(key prefixes: {', '.join(seen)}); a checkpoint of another architecture?"
        )
    for prefix, part in SGM_PARTS.items():
        if not any(k.startswith(prefix) for k in keys):
            raise InputError(f"{path} lacks {part} ({prefix}* tensors); SDXL needs all four")
    edm = [k for k in EDM_KEYS if k in keys]
    if edm:
        raise InputError(f"{path} is an EDM-schedule SDXL ({edm[0]}): kohaku trains the "
                         "DDPM schedule (epsilon or v-prediction) only")  # fmt: skip


def single_file_configs(path: Path, header: Header, config_dir: Path | None) -> SDXLConfigs:
    """config_dir's configs, else the file's kohaku metadata, else SDXL 1.0's."""
    if config_dir is not None:
        return folder_configs(config_dir)
    if META_CONFIGS in header.metadata:
        try:
            return SDXLConfigs.from_json(header.metadata[META_CONFIGS])
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: unreadable {META_CONFIGS} metadata ({e})") from e
    return SDXLConfigs.builtin()


def folder_configs(folder: Path) -> SDXLConfigs:
    try:
        return SDXLConfigs.from_folder(folder)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"cannot read the configs of {folder}: {e}") from e


def schedule_prediction(configs: SDXLConfigs) -> tuple[Prediction, bool]:
    s = configs.scheduler
    return s.get("prediction_type", "epsilon"), bool(s.get("rescale_betas_zero_snr", False))


def file_prediction(header: Header, configs: SDXLConfigs) -> tuple[Prediction, bool]:
    """ComfyUI's reading: a `v_pred` key makes a v-prediction model, `ztsnr` beside it a
    zero-terminal-SNR one; without them, what the configs' schedule says."""
    if "v_pred" in header.specs:
        return "v_prediction", "ztsnr" in header.specs
    return schedule_prediction(configs)


def check_shapes(path: Path, header: Header, configs: SDXLConfigs, config_dir: Path | None):
    """Every tensor the configs' models need is in the file, in that shape (compared
    through the SGM name table)."""
    want = sgm_shapes(configs.to_json())
    have = {k: spec.shape for k, spec in header.specs.items()}
    missing = [k for k in want if k not in have]
    builtin = config_dir is None and META_CONFIGS not in header.metadata
    hint = " (SDXL 1.0's; set config_dir to a diffusers folder that describes it)"
    if missing:
        raise InputError(f"{path} lacks {len(missing)} SDXL tensors{hint if builtin else ''}, "
                         f"e.g. {missing[:3]}")  # fmt: skip
    wrong = [f"{k} {have[k]} (expected {tuple(v)})" for k, v in want.items()
             if squeeze(have[k]) != squeeze(tuple(v))]  # fmt: skip
    if not wrong:
        return
    if config_dir is not None:
        raise InputError(f"config_dir {config_dir} does not describe {path}: {wrong[:3]}")
    if not builtin:
        raise InputError(f"{path}: its {META_CONFIGS} metadata does not describe its "
                         f"tensors: {wrong[:3]}")  # fmt: skip
    raise InputError(
        f"{path} is not shaped like SDXL 1.0 ({len(wrong)} tensors differ, e.g. "
        f"{wrong[0]}): set config_dir to a diffusers folder that describes it"
    )


def squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Trailing 1s dropped: VAE attention is stored as [C, C, 1, 1] or as [C, C]."""
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def source_configs(source: ModelSource) -> SDXLConfigs:
    """The configs check_model_path resolved, with the schedule of what the model predicts."""
    configs = source.configs
    if configs is None:  # a ModelSource made by hand
        configs = check_model_path(source.path, source.allow_pickle, source.config_dir).configs
    assert configs is not None
    return configs.with_prediction(source.prediction, source.zero_snr)


# ---------------------------------------------------------------------------- loading


def vae_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The training VAE: SDXL 1.0's VAE overflows (NaN) in fp16, so it stays fp32 under
    fp16; bf16 has fp32's range and halves the encode's activations."""
    return torch.float32 if dtype == torch.float16 else dtype


def load_sdxl(source: ModelSource, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None,
              vae_dtype: torch.dtype | None = None) -> SDXLParts:  # fmt: skip
    """Load a checked source: UNet and text encoders in `dtype`, the VAE in `vae_dtype`
    (default `dtype`), straight onto `device` (default CPU); eval mode, weights frozen."""
    from diffusers import DDPMScheduler

    device = torch.device(device or "cpu")
    dtypes = {name: dtype for name in MODELS} | {"vae": vae_dtype or dtype}
    configs = source_configs(source)
    models = stream_models(source, configs, dtypes, device)
    for model in models.values():
        model.to(device).eval().requires_grad_(False)  # buffers (position ids) follow
    tokenizer, tokenizer_2 = source_tokenizers(source)
    return SDXLParts(**models, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                     noise_scheduler=DDPMScheduler.from_config(configs.scheduler),
                     base_lokr=source.lokr)  # fmt: skip


def checkpoint_activations(parts: SDXLParts, text_encoders: bool) -> None:
    """Gradient checkpointing of the UNet's blocks and, when they are trained, of the text
    encoders' layers: their activations at 225 tokens (3 chunks of 77 per caption, through
    32 layers of 1280 in the second encoder) are kept otherwise. transformers checkpoints a
    layer only when that layer is in training mode, so the layers alone are flagged (not
    their attention modules: their dropout, 0 in SDXL, stays off as in eval mode); its
    non-reentrant checkpoint passes gradients to the LoKr although token ids need none."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    parts.unet.enable_gradient_checkpointing()
    if not text_encoders:
        return
    for encoder in (parts.text_encoder, parts.text_encoder_2):
        encoder.activation_checkpointing_enable({"use_reentrant": False})
        for layer in encoder.modules():
            if isinstance(layer, GradientCheckpointingLayer):
                layer.training = True


def free_unused_vae(vae: torch.nn.Module, encoder: bool) -> int:
    """Drop the VAE halves that training never runs: the decoder always, the encoder too when
    every latent comes from the latent cache (`encoder` False); the config stays. Returns
    the parameters freed (SDXL's VAE: 49.5M of decoder, 34.2M of encoder)."""
    names = ("decoder", "post_quant_conv") + (() if encoder else ("encoder", "quant_conv"))
    freed = 0
    for name in names:
        module = getattr(vae, name, None)
        if module is not None:
            freed += sum(p.numel() for p in module.parameters())
            setattr(vae, name, None)
    return freed


def stream_models(source: ModelSource, configs: SDXLConfigs, dtypes: dict[str, torch.dtype],
                  device: torch.device) -> dict[str, torch.nn.Module]:  # fmt: skip
    """The four models, filled tensor by tensor (the base LoKr folded in as they come)."""
    lokr = source.lokr
    deltas = None if lokr is None else open_base_lokr(source, configs, lokr.path, lokr.weight)
    try:
        if source.kind == "diffusers":
            return load_folder(source.path, configs, dtypes, device, source.allow_pickle,
                               deltas)  # fmt: skip
        models = empty_models(configs)
        with open_tensors(source.path) as tensors:
            fill(models, tensors, sgm_plan(models), dtypes, device, deltas)
        return models
    finally:
        if deltas is not None:
            deltas.close()


def source_tokenizers(source: ModelSource) -> tuple[Any, Any]:
    """A folder's own tokenizers; for a single file config_dir's, the ones its metadata
    records, or CLIP's (built offline)."""
    from transformers import CLIPTokenizer

    from kohaku.sdxl.tokenizers import sdxl_tokenizers, tokenizers_from_spec

    folder = source.path if source.kind == "diffusers" else source.config_dir
    if folder is not None:
        return tuple(
            CLIPTokenizer.from_pretrained(folder, subfolder=s, local_files_only=True)
            for s in ("tokenizer", "tokenizer_2")
        )  # type: ignore[return-value]
    meta = read_header(source.path).metadata if source.path.suffix == ".safetensors" else {}
    if META_TOKENIZERS in meta:
        return tokenizers_from_spec(json.loads(meta[META_TOKENIZERS]))
    return sdxl_tokenizers()


def meta_models(source: ModelSource, names: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """The models `names` of a checked source with empty weights (for preset checks)."""
    return empty_models(source_configs(source), names)
