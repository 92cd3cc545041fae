"""LoKr files as clients read them: kohya/LyCORIS SDXL metadata (A1111 and Forge list the
file under SDXL), every tensor finite (full-matrix alpha included), the umask's file mode,
and a reload that computes what the trained adapters computed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from kohaku.sdxl import lokr
from kohaku.sdxl.tiny import tiny_sdxl_components

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def adapted(seed: int = 0, w2_scale: float = 0.05) -> tuple[dict, lokr.Adapters]:
    """The tiny models with a delta-preset LoKr whose w2 is non-zero (outputs change)."""
    parts = tiny_sdxl_components(0)
    models = {c: getattr(parts, c) for c in COMPONENTS}
    adapters = lokr.attach(lokr.load_preset("delta"), models, seed=seed)
    g = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for net in adapters.networks.values():
            for name, p in net.named_parameters():
                if name.endswith("lokr_w2"):
                    p.copy_(torch.randn(p.shape, generator=g) * w2_scale)
    return models, adapters


def outputs(models: dict) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    unet = models["unet"]
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    cond = {"text_embeds": torch.randn(1, pooled, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}  # fmt: skip
    hidden = torch.randn(1, 77, cfg.cross_attention_dim, generator=g)
    ids = torch.randint(0, 100, (1, 12), generator=g)
    with torch.no_grad():
        x = unet(torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), hidden,
                 added_cond_kwargs=cond).sample  # fmt: skip
        te = [models[c](ids).last_hidden_state for c in COMPONENTS[1:]]
    return [x, *te]


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.mark.parametrize("prediction,spec,zero_snr", [("epsilon", "epsilon", False),
                                                     ("v_prediction", "v", True)])  # fmt: skip
def test_saved_lokr_carries_kohya_sdxl_metadata_and_finite_tensors(
    tmp_path: Path, umask_022, prediction: str, spec: str, zero_snr: bool
):
    _, adapters = adapted()
    path = lokr.save(adapters, tmp_path / "lokr.safetensors", prediction=prediction,
                     title="my-run", zero_snr=zero_snr)  # fmt: skip
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"].startswith("sdxl_")  # A1111 / Forge: an SDXL network
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"  # Forge
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.prediction_type"] == spec
    assert meta["ss_zero_terminal_snr"] == str(zero_snr)  # sd-scripts' key and spelling
    assert meta["modelspec.title"] == meta["ss_output_name"] == "my-run"
    assert meta["modelspec.resolution"] == "1024x1024" and meta["modelspec.date"]
    assert meta["ss_network_dim"] == "100000" and float(meta["ss_network_alpha"]) == 1.0
    args = json.loads(meta["ss_network_args"])
    assert args["algo"] == "lokr" and args["preset"] == "delta" and args["factor"] == "8"
    assert args["full_matrix"] == "True" and args["unet_factors"] == "Attention=4,FeedForward=4"
    assert lokr.read_recipe(path) == (adapters.preset, list(COMPONENTS))
    tensors = load_file(str(path))
    assert all(v.dtype == torch.float16 for v in tensors.values())
    assert all(bool(torch.isfinite(v).all()) for v in tensors.values())
    alphas = [v for k, v in tensors.items() if k.endswith(".alpha")]
    assert len(alphas) == len(tensors) // 3 and all(float(a) == 1.0 for a in alphas)
    assert path.stat().st_mode & 0o777 == 0o644


def test_reload_uses_the_trained_scale(tmp_path: Path):
    """alpha 1 in the file (lycoris trained with 100000): the reloaded adapters still scale
    by 1 and compute what the saved ones computed."""
    models, adapters = adapted()
    want = outputs(models)
    path = lokr.save(adapters, tmp_path / "lokr.safetensors", torch.float32)
    fresh_models, fresh = adapted(seed=1)
    assert (outputs(fresh_models)[0] - want[0]).abs().max() > 1e-3  # other weights: other outputs
    lokr.load_into(fresh, path)
    for got, expected in zip(outputs(fresh_models), want, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    scales = {m.scale for net in fresh.networks.values() for m in net.loras}
    assert scales == {1.0}


def test_a_lokr_that_does_not_fit_the_storage_dtype_is_refused(tmp_path: Path):
    _, adapters = adapted(w2_scale=1e6)  # beyond fp16's 65504
    with pytest.raises(ValueError, match="not finite in torch.float16"):
        lokr.save(adapters, tmp_path / "lokr.safetensors")
    assert not (tmp_path / "lokr.safetensors").exists()
    lokr.save(adapters, tmp_path / "lokr.safetensors", torch.float32)  # fits float32
