"""Gradient checkpointing of the trained text encoders: the same gradients reach their LoKr,
and the activations kept for the backward pass are a fraction of what they were."""

from __future__ import annotations

import torch

from kohaku.sdxl import lokr
from kohaku.sdxl.model import checkpoint_activations
from kohaku.sdxl.text import encode_text
from kohaku.sdxl.tiny import tiny_sdxl_components

CAPTION = ", ".join(f"tag number {i}" for i in range(60))  # over 150 tokens: 3 chunks


def encode_and_backward(checkpointing: bool) -> tuple[int, dict[str, torch.Tensor]]:
    """(bytes of the tensors autograd keeps outside checkpoints, the LoKr gradients)."""
    parts = tiny_sdxl_components(seed=0)
    models = {"unet": parts.unet, "text_encoder": parts.text_encoder,
              "text_encoder_2": parts.text_encoder_2}  # fmt: skip
    adapters = lokr.attach(lokr.load_preset("delta"), models, seed=0)
    params = {f"{c}.{n}": p for c, net in adapters.networks.items() if c != "unet"
              for n, p in net.named_parameters()}  # fmt: skip
    with torch.no_grad():  # w2 starts at zero; make both factors carry gradient
        for p in params.values():
            p.add_(0.01)
    if checkpointing:
        checkpoint_activations(parts, text_encoders=True)
    kept: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        embeds = encode_text(parts, [CAPTION, "1girl"], 225, torch.device("cpu"))
    assert embeds.hidden.shape[1] == 3 * 77
    (embeds.hidden.square().mean() + embeds.pooled.square().mean()).backward()
    return sum(kept), {n: p.grad for n, p in params.items()}


def test_checkpointed_text_encoders_give_the_same_lokr_gradients_for_less_memory():
    kept, grads = encode_and_backward(checkpointing=False)
    kept_ckpt, grads_ckpt = encode_and_backward(checkpointing=True)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 0
    assert all(g is not None and g.abs().sum() > 0 for g in grads_ckpt.values())
    for name, g in grads.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=0, atol=0, msg=name)
    assert kept_ckpt < kept / 4, (kept_ckpt, kept)


def test_only_the_unet_is_checkpointed_when_the_encoders_are_frozen():
    parts = tiny_sdxl_components(seed=0)
    checkpoint_activations(parts, text_encoders=False)
    assert parts.unet.is_gradient_checkpointing
    assert not parts.text_encoder.is_activation_checkpointing  # transformers 5 name
    assert not any(m.training for m in parts.text_encoder_2.modules())
