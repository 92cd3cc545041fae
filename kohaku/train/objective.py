"""The SDXL training objective: prompts to conditioning, images to latents, noise, the
UNet's prediction and the per-sample loss (epsilon or v-prediction, on SDXL's schedule or
rescaled to zero terminal SNR; min-SNR or debiased weighting; offset noise). The schedule a
run trains on is `kohaku.sdxl.schedule.schedule_source`'s.

Reads and writes nothing. Every random draw of a sample (latent sampling, timestep,
noise, offset) comes from a generator keyed by (seed, epoch, post id[, repeat]), so a
sample's loss does not depend on which rank or micro-batch it lands in, nor on a resume.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from kohaku.sdxl.text import encode_text
from kohaku.train.config import DEFAULT_MAX_TOKENS, LossConfig

log = logging.getLogger(__name__)
# debiased estimation's SNR range: sd-scripts' cap (SDXL's t = 0 has SNR 1175), and a floor
# below any SNR of SDXL's own schedule (0.0047 at t = 999) that keeps 1/sqrt(SNR) finite
SNR_MAX, SNR_MIN = 1000.0, 1e-3


@dataclass
class Conditioning:
    hidden: torch.Tensor  # [B, 77 * chunks, TE1 hidden + TE2 hidden], both penultimate layers
    pooled: torch.Tensor  # [B, TE2 projection]
    time_ids: torch.Tensor  # [B, 6]: original h, w, crop top, left, target h, w


def sample_generator(seed: int, epoch: int, post_id: int, repeat: int = 0) -> torch.Generator:
    """The generator of one sample's draws: a post's `repeat`-th showing in `epoch` (the
    repeat joins the key only from 1 on: the first showing draws as without repeats)."""
    return keyed_generator(f"{seed}:{epoch}:{post_id}" + (f":{repeat}" if repeat else ""))


def keyed_generator(key: str) -> torch.Generator:
    """A CPU generator seeded by the first 8 bytes of blake2b(`key`): the same stream for
    the same key in any process, rank or order of calls."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def encode_prompts(parts, captions: list[str], time_ids: torch.Tensor,
                   max_tokens: int = DEFAULT_MAX_TOKENS) -> Conditioning:  # fmt: skip
    """SDXL conditioning: both encoders' penultimate hidden states side by side over as many
    chunks of 75 tokens as the batch's longest caption needs (`kohaku.sdxl.text`), TE2's
    pooled projection of the first chunk, and the size/crop micro-conditioning."""
    text = encode_text(parts, captions, max_tokens, time_ids.device)
    return Conditioning(text.hidden, text.pooled, time_ids)


def time_ids(original: torch.Tensor, crop: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, 6] from [B, 2] (h, w) original size, (top, left) crop and (h, w) target size."""
    return torch.cat([original, crop, target], dim=1).float()


@dataclass
class Draws:
    """A micro-batch's random draws, one generator per sample."""

    timesteps: torch.Tensor
    noise: torch.Tensor
    latent_eps: torch.Tensor


def draw(gens: list[torch.Generator], latent_shape: tuple[int, ...], cfg: LossConfig,
         steps: int) -> Draws:  # fmt: skip
    ts, noises, eps = [], [], []
    for g in gens:
        eps.append(torch.randn(latent_shape, generator=g))
        ts.append(torch.randint(0, steps, (1,), generator=g))
        noise = torch.randn(latent_shape, generator=g)
        offset = torch.randn((latent_shape[0], 1, 1), generator=g)
        noises.append(noise + cfg.noise_offset * offset if cfg.noise_offset else noise)
    return Draws(torch.cat(ts), torch.stack(noises), torch.stack(eps))


def to_latents(vae, pixels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Sample the VAE posterior with the given standard normal draws, in float32. The
    encode runs in the VAE's own dtype with autocast off: SDXL's VAE overflows in fp16.
    One image at a time: at 1024x1024 the fp32 encode of a batch of 4 peaks at 10.8 GB
    of activations, one image at 2.7 GB (bench/memory_table.py), and the VAE's group
    norms are per image, so the result is the same."""
    means, stds = [], []
    with torch.no_grad(), torch.autocast(pixels.device.type, enabled=False):
        for image in pixels.split(1):
            dist = vae.encode(image.to(vae.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    latents = torch.cat(means) + torch.cat(stds) * eps.float()
    return latents * vae.config.scaling_factor


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """alpha_bar / (1 - alpha_bar): 0 at the last timestep of a zero-terminal-SNR schedule."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    return alphas / (1 - alphas)


def loss_weights(s: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Per-sample weights of the MSE to the target at SNR `s`; finite at SNR 0.

    Both weightings are defined on the epsilon loss; the epsilon loss is SNR times the x0
    loss, the v loss (SNR + 1) times it. min_snr (arXiv 2303.09556): min(SNR, gamma) / SNR
    for epsilon, written min(gamma / SNR, 1) so that SNR 0 gives 1, not 0/0; the same x0
    weight min(SNR, gamma) for v is min(SNR, gamma) / (SNR + 1), 0 at SNR 0 (as in
    sd-scripts, diffusers and NovelAI's v3 run: the last step is learnt at min-SNR's
    weight). debiased (arXiv 2310.08442): 1 / sqrt(SNR) for epsilon; for v 1 / (SNR + 1),
    sd-scripts' form (kohya-ss/sd-scripts#1058: x0 weight 1, 1 at SNR 0); the SNR capped at
    SNR_MAX first as sd-scripts does (and floored at SNR_MIN for epsilon)."""
    kind, v = cfg.weights, cfg.prediction == "v_prediction"
    if kind == "min_snr":
        gamma = cfg.min_snr_gamma
        assert gamma is not None  # LossConfig checks it
        return torch.clamp(s, max=gamma) / (s + 1) if v else torch.clamp(gamma / s, max=1.0)
    if kind == "debiased":
        return 1 / (s.clamp(max=SNR_MAX) + 1) if v else s.clamp(SNR_MIN, SNR_MAX).rsqrt()
    return torch.ones_like(s)


def sample_losses(parts, latents: torch.Tensor, cond: Conditioning, draws: Draws,
                  cfg: LossConfig) -> torch.Tensor:  # fmt: skip
    """Per-sample loss [B]: MSE to the target, weighted per timestep (`loss_weights`)."""
    sched, t = parts.noise_scheduler, draws.timesteps.to(latents.device)
    noise = draws.noise.to(latents)
    noisy = sched.add_noise(latents, noise, t)
    target = noise if cfg.prediction == "epsilon" else sched.get_velocity(latents, noise, t)
    pred = parts.unet(noisy, t, cond.hidden, added_cond_kwargs={
        "text_embeds": cond.pooled, "time_ids": cond.time_ids}).sample  # fmt: skip
    mse = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    if cfg.weights == "none":
        return mse
    return mse * loss_weights(snr(sched, t).float(), cfg)
