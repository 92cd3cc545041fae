"""A random-weight SDXL 1.0 single file in the official (SGM) layout, written as a stream.

    python bench/sdxl_file.py --out bench/out/fullsize/sdxl-fp16.safetensors [--dtype bf16]

The file has the official checkpoint's 2,515 tensors under their official names
(`model.diffusion_model.*`, `first_stage_model.*`, `conditioner.embedders.0.transformer.
text_model.*` with TE1's int64 `position_ids`, `conditioner.embedders.1.model.*` with TE2's
`logit_scale`), 6.94 GB in fp16. Shapes come from SDXL 1.0's configs
(`kohaku.sdxl.configs`), models built on the meta device (nothing allocated); every tensor is
drawn, cast and written one at a time (`kohaku.sdxl.tensors.write_safetensors`), so the
writer's memory stays near one tensor. Weights are drawn so that a forward pass stays finite
and of a sane scale through 70 transformer blocks: norm scales 1, biases 0, matrices uniform
with the variance of a fan-in initialisation. Reads nothing; writes the file (temporary
name, then renamed). `v_pred` adds ComfyUI's empty marker tensor of a v-prediction model.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TE1 = "conditioner.embedders.0.transformer.text_model."
TE2 = "conditioner.embedders.1.model."
EXTRA = {  # in the official file, absent from the module state dicts of transformers 5
    TE1 + "embeddings.position_ids": (torch.int64, (1, 77)),
    TE2 + "logit_scale": (None, ()),
}
OFFICIAL_TENSORS = 2515


def meta_models(half: bool = False) -> dict[str, torch.nn.Module]:
    """SDXL 1.0's four models on the meta device (`half`: every width halved)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from kohaku.sdxl.configs import SDXL_TEXT, SDXL_TEXT_PROJECTION, SDXL_UNET, SDXL_VAE, SDXL_VOCAB

    k = 2 if half else 1
    unet = dict(SDXL_UNET, block_out_channels=[c // k for c in SDXL_UNET["block_out_channels"]],
                cross_attention_dim=2048 // k,
                projection_class_embeddings_input_dim=1536 + SDXL_TEXT_PROJECTION // k)  # fmt: skip
    vae = dict(SDXL_VAE, block_out_channels=[c // k for c in SDXL_VAE["block_out_channels"]])

    def clip(hidden: int, layers: int, heads: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=SDXL_VOCAB, hidden_size=hidden // k,
                              projection_dim=SDXL_TEXT_PROJECTION // k,
                              intermediate_size=4 * hidden // k, num_hidden_layers=layers,
                              num_attention_heads=heads // k, max_position_embeddings=77,
                              hidden_act=act)  # fmt: skip

    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(unet),
            "vae": AutoencoderKL.from_config(vae),
            "text_encoder": CLIPTextModel(clip(*SDXL_TEXT["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(clip(*SDXL_TEXT["text_encoder_2"])),
        }


def official_shapes(half: bool = False) -> dict[str, tuple[torch.dtype | None, tuple[int, ...]]]:
    """Official name -> (dtype or None for the file's float dtype, shape), sorted by name."""
    from kohaku.sdxl.model import sgm_state

    shapes = {k: (None, tuple(v.shape)) for k, v in sgm_state(meta_models(half)).items()}
    shapes |= EXTRA
    return dict(sorted(shapes.items()))


def draw(name: str, dtype: torch.dtype, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """One tensor, initialised so that activations keep their scale."""
    if name.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
    if name.endswith("logit_scale"):
        return torch.tensor(math.log(100.0)).to(dtype)
    if len(shape) <= 1:  # a 1-D weight is a norm's scale (1); biases and shifts 0
        return (torch.ones if name.endswith(".weight") else torch.zeros)(shape, dtype=dtype)
    fan_in = math.prod(shape[1:]) if "embedding" not in name else shape[-1]
    bound = math.sqrt(3.0 / fan_in)
    return torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=g).to(dtype)


def write_sdxl_file(path: Path, dtype: str = "fp16", seed: int = 0, half: bool = False,
                    v_pred: bool = False) -> dict:  # fmt: skip
    """Write the file; returns figures (seconds, peak RSS of this process, tensors, bytes)."""
    from kohaku.sdxl.tensors import OutSpec, write_safetensors

    start, float_dtype = time.perf_counter(), DTYPES[dtype]
    shapes = official_shapes(half)
    if v_pred:
        shapes["v_pred"] = (None, (0,))
    specs = [OutSpec(k, d or float_dtype, s) for k, (d, s) in shapes.items()]

    def tensors():
        for i, spec in enumerate(specs):
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            yield draw(spec.name, spec.dtype, spec.shape, g)

    meta = {"format": "pt", "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": "stable-diffusion-xl-v1-base"}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, specs, tensors(), meta)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "tensors": len(specs),
        "params": sum(math.prod(s.shape) for s in specs if s.dtype.is_floating_point),
        "bytes": path.stat().st_size,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--half", action="store_true", help="every width halved (~1/4 the bytes)")
    p.add_argument("--v-pred", action="store_true", help="add the v_pred marker key")
    args = p.parse_args()
    print(json.dumps(write_sdxl_file(args.out, args.dtype, args.seed, args.half, args.v_pred)))


if __name__ == "__main__":
    main()
