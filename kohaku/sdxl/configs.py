"""The SDXL architecture as configs (no weights): SDXL 1.0's UNet, VAE, both text encoders
and its noise schedule built in, or the same read from a diffusers folder or from a kohaku
single file's metadata; and the four models built from them with empty weights.

Reads a diffusers folder's `*/config.json` and `scheduler/scheduler_config.json` when asked
(`SDXLConfigs.from_folder`). Writes nothing. The built-in values are those of
stabilityai/stable-diffusion-xl-base-1.0 (its `unet`, `vae`, `text_encoder`,
`text_encoder_2` and `scheduler` configs), so that an SGM single file needs nothing beside it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}  # fmt: skip
SDXL_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "sample_size": 1024, "scaling_factor": 0.13025,
    # SDXL 1.0's VAE overflows in fp16: diffusers' pipelines decode it in fp32 when set
    "force_upcast": True,
}  # fmt: skip
# hidden size, layers, attention heads, activation; the MLP is 4x the hidden size
SDXL_TEXT = {"text_encoder": (768, 12, 12, "quick_gelu"), "text_encoder_2": (1280, 32, 20, "gelu")}
SDXL_TEXT_PROJECTION = 1280
SDXL_VOCAB = 49408
SDXL_SCHEDULER = {  # the training schedule (DDPM); sampling uses Euler from the same config
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
    "timestep_spacing": "leading", "clip_sample": False, "sample_max_value": 1.0,
}  # fmt: skip
MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")


def text_config(name: str) -> dict[str, Any]:
    """SDXL 1.0's `text_encoder` (CLIP ViT-L) or `text_encoder_2` (OpenCLIP bigG) config.
    Token ids 0/2/1 as in the released configs: eos id 2 makes transformers pool at the
    highest id (`<|endoftext|>`), as CLIP did."""
    hidden, layers, heads, act = SDXL_TEXT[name]
    return {
        "vocab_size": SDXL_VOCAB, "hidden_size": hidden, "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "hidden_act": act,
        "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
        "projection_dim": SDXL_TEXT_PROJECTION if name == "text_encoder_2" else hidden,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }  # fmt: skip


@dataclass(frozen=True)
class SDXLConfigs:
    """The configs of the four models and the noise schedule, as plain dicts."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SDXL_SCHEDULER))

    @classmethod
    def builtin(cls) -> SDXLConfigs:
        """SDXL 1.0 base."""
        return cls(dict(SDXL_UNET), dict(SDXL_VAE), text_config("text_encoder"),
                   text_config("text_encoder_2"))  # fmt: skip

    @classmethod
    def from_folder(cls, folder: Path) -> SDXLConfigs:
        """The configs of a diffusers SDXL folder (weights not needed)."""
        read = lambda p: json.loads((Path(folder) / p).read_text())  # noqa: E731
        return cls(**{name: read(f"{name}/config.json") for name in MODELS},
                   scheduler=read("scheduler/scheduler_config.json"))  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> SDXLConfigs:
        return cls(**{k: v for k, v in json.loads(text).items() if k in (*MODELS, "scheduler")})

    @classmethod
    def of(cls, models: dict[str, Any], scheduler: Any) -> SDXLConfigs:
        """The configs of loaded models (diffusers `config`, transformers `to_dict()`)."""

        def plain(config: Any) -> dict[str, Any]:
            text = config.to_json_string() if hasattr(config, "to_json_string") else \
                json.dumps(dict(config), default=str)  # fmt: skip
            return public(json.loads(text))

        return cls(**{name: plain(models[name].config) for name in MODELS},
                   scheduler=plain(scheduler.config))  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def with_prediction(self, prediction: str, zero_snr: bool) -> SDXLConfigs:
        """The schedule of a v-prediction (and zero-terminal-SNR) model: what training and
        sampling use (trailing spacing: the last step starts from pure noise)."""
        scheduler = {**public(self.scheduler), "prediction_type": prediction}
        if zero_snr:
            scheduler |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
        return replace(self, scheduler=scheduler)


def public(config: dict[str, Any]) -> dict[str, Any]:
    """A config without diffusers' bookkeeping (`_class_name`, `_use_default_values`: a key
    listed there would be dropped by `from_config`)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def empty_models(configs: SDXLConfigs, names: tuple[str, ...] = MODELS) -> dict[str, Any]:
    """The models `names` built from `configs` with their parameters on the meta device
    (nothing allocated) and their buffers real (CLIP's position ids): ready to be filled."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    build = {
        "unet": lambda c: UNet2DConditionModel.from_config(c),
        "vae": lambda c: AutoencoderKL.from_config(c),
        "text_encoder": lambda c: CLIPTextModel(CLIPTextConfig(**c)),
        "text_encoder_2": lambda c: CLIPTextModelWithProjection(CLIPTextConfig(**c)),
    }
    with init_empty_weights(include_buffers=False):
        return {name: build[name](getattr(configs, name)) for name in names}
