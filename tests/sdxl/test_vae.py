"""The trainer frees the VAE halves it never runs (`free_unused_vae`): the decoder always,
the encoder too when every latent comes from the cache; what stays encodes as before."""

from __future__ import annotations

import torch

from kohaku.sdxl.model import free_unused_vae
from kohaku.sdxl.tiny import tiny_vae


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_decoder_goes_and_the_encoder_encodes_as_before():
    torch.manual_seed(0)
    vae, pixels = tiny_vae().eval(), torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae.encode(pixels).latent_dist.mean
    decoder = count(vae.decoder) + count(vae.post_quant_conv)
    total = count(vae)
    assert free_unused_vae(vae, encoder=True) == decoder > 0
    assert vae.decoder is None and count(vae) == total - decoder
    assert not any(k.startswith(("decoder.", "post_quant_conv.")) for k in vae.state_dict())
    with torch.no_grad():
        assert torch.equal(vae.encode(pixels).latent_dist.mean, before)


def test_with_every_latent_cached_only_the_config_stays():
    vae = tiny_vae()
    total, factor = count(vae), vae.config.scaling_factor
    assert free_unused_vae(vae, encoder=False) == total
    assert count(vae) == 0 and vae.config.scaling_factor == factor
    assert free_unused_vae(vae, encoder=False) == 0  # freeing twice frees nothing more
