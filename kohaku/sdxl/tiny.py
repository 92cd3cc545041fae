"""A tiny SDXL-shaped model built in code, with seeded random weights, for tests and demos.

Reads nothing. `tiny_sdxl_components` returns `SDXLParts` in memory; `write_tiny_sdxl` writes
them as a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
`text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `scheduler/`, safetensors weights only) that
`StableDiffusionXLPipeline.from_pretrained(dir, local_files_only=True)` loads. Nothing is
fetched from a hub: the two CLIP tokenizers are byte-level BPE vocabularies written here.

The shapes follow SDXL 1.0 (text_time added conditioning, two text encoders whose hidden
states are concatenated for cross-attention, an 8x VAE with scaling factor 0.13025) at a
size that runs a training step on CPU in well under a second at 64 px.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from kohaku.sdxl.model import SDXLParts, save_diffusers

TE1_HIDDEN = 32
# TE2 must differ from TE1 in width: diffusers' single-file loader tells the two SGM text
# encoders apart by the width of TE1's position embedding (`is_clip_sdxl_model`), so equal
# widths would load TE1's weights into TE2.
TE2_HIDDEN = 48
TE2_PROJECTION = 32
TIME_EMBED_DIM = 8
PADS = ("<|endoftext|>", "!")  # the pad tokens of SDXL's tokenizer and tokenizer_2
MERGES = ("t h", "th e</w>", "a n", "i n", "o n</w>", "e r", "g i", "gi r", "gir l</w>", "a t</w>")

SCHEDULER_CONFIG = {  # SDXL 1.0's training schedule (scheduler/scheduler_config.json)
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
    "sample_max_value": 1.0,
}


def byte_unicode_chars() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for the bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in codes:
            codes[b], extra = 256 + extra, extra + 1
    return [chr(codes[b]) for b in range(256)]


def bpe_vocab() -> dict[str, int]:
    """CLIP's vocab layout in small: bytes, bytes + `</w>`, merge results, then specials."""
    chars = byte_unicode_chars()
    tokens = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in MERGES)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def write_tokenizer(out_dir: Path, pad_token: str) -> Path:
    """vocab.json, merges.txt and the configs of a CLIPTokenizer (77 tokens, like SDXL)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(bpe_vocab(), ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    config = {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return out_dir


def text_config(hidden: int, act: str, projection: int) -> CLIPTextConfig:
    vocab = bpe_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,  # SDXL: TE1 (CLIP ViT-L) quick_gelu, TE2 (OpenCLIP bigG) gelu
        projection_dim=projection,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),  # SDXL's field holds the number of heads
        use_linear_projection=True,
        cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        # six micro-conditioning numbers (size, crop, target size), each embedded, + TE2 pooled
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TE2_PROJECTION,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),  # four blocks: 8x down like SDXL's VAE
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
    )


def tiny_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    """Load through files, which every transformers version's CLIPTokenizer accepts."""
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [write_tokenizer(Path(tmp) / str(i), pad) for i, pad in enumerate(PADS)]
        one, two = (CLIPTokenizer.from_pretrained(d, local_files_only=True) for d in dirs)
    return one, two


def tiny_sdxl_components(seed: int = 0) -> SDXLParts:
    """All seven SDXL parts, random weights drawn from `seed`, in float32 eval mode."""
    tokenizer, tokenizer_2 = tiny_tokenizers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae = tiny_unet(), tiny_vae()
        text_encoder = CLIPTextModel(text_config(TE1_HIDDEN, "quick_gelu", TE1_HIDDEN))
        text_encoder_2 = CLIPTextModelWithProjection(
            text_config(TE2_HIDDEN, "gelu", TE2_PROJECTION)
        )
    return SDXLParts(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        noise_scheduler=DDPMScheduler(**SCHEDULER_CONFIG),
    )


def write_tiny_sdxl(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny SDXL and write it as a float32 diffusers folder; returns `out_dir`."""
    return save_diffusers(tiny_sdxl_components(seed), Path(out_dir), torch.float32)
