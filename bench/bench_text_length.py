"""Benchmark: what longer captions cost at full SDXL size, counted, not timed.

    python bench/bench_text_length.py            # chunks 1, 2, 3, 4, 6, 9, 12

Builds SDXL 1.0's UNet and both text encoders on the meta device (nothing allocated) and
counts FLOPs with torch's FlopCounterMode: the UNet forward+backward on one 1024x1024 image
(128x128 latents) with a context of 77 x chunks tokens, and both text encoders' forward on
one 77-token chunk. The text encoders' backward (when they train) is taken as twice their
forward. Why `MAX_TOKENS_LIMIT` is 675 (README, "Why 675 at most").
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from kohaku.sdxl.configs import SDXLConfigs, empty_models


def unet_flops(unet, tokens: int) -> int:
    with torch.device("meta"):
        latents, context = torch.randn(1, 4, 128, 128), torch.randn(1, tokens, 2048)
        added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
        timestep = torch.tensor([500])
    with FlopCounterMode(display=False) as counter:
        out = unet(latents, timestep, context, added_cond_kwargs=added).sample
        out.sum().backward()
    return counter.get_total_flops()


def text_flops(encoder) -> int:
    with torch.device("meta"):
        ids = torch.zeros(1, 77, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(ids, output_hidden_states=True)
    return counter.get_total_flops()


def main() -> None:
    models = empty_models(SDXLConfigs.builtin(), ("unet", "text_encoder", "text_encoder_2"))
    text = text_flops(models["text_encoder"]) + text_flops(models["text_encoder_2"])
    print(f"both text encoders, one chunk, forward: {text / 1e12:.3f} TFLOP")
    base = None
    for chunks in (1, 2, 3, 4, 6, 9, 12):
        unet = unet_flops(models["unet"], 77 * chunks)
        step = unet + 3 * chunks * text  # text encoders trained: forward + ~2x backward
        base = base or (unet, step)
        more_unet, more_step = (unet / base[0] - 1) * 100, (step / base[1] - 1) * 100
        print(f"chunks {chunks:2d} (max_tokens {75 * chunks:3d}): UNet fwd+bwd "
              f"{unet / 1e12:.2f} TFLOP (+{more_unet:.1f} %), text encoders fwd "
              f"{chunks * text / 1e12:.2f}, step +{more_step:.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
