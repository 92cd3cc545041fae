"""Evaluate's sampling precision: `auto` is bf16 on the CPU and fp16 on a GPU; the base is
streamed in that dtype (a single file with nothing beside it) and the pictures are finite.
The VAE decodes in fp32 under fp16 (SDXL's VAE overflows there) and on a CPU (half-precision
convolutions are emulated there), and its decode is the pipeline's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kohaku.evaluate.generate import (
    Checkpoint,
    Job,
    Sampler,
    decode_dtype,
    initial_latents,
    resolve_dtype,
)
from kohaku.sdxl.model import check_model_path, save_single_file
from kohaku.sdxl.tiny import tiny_sdxl_components
from tests.evaluate.conftest import tiny_config


def test_auto_precision_is_bf16_on_the_cpu_and_fp16_on_a_gpu():
    cfg = tiny_config(precision="auto")
    assert resolve_dtype(cfg, torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(cfg, torch.device("cuda")) == torch.float16
    assert resolve_dtype(tiny_config(precision="fp32"), torch.device("cuda")) == torch.float32


@pytest.mark.parametrize(("precision", "dtype"), [("auto", torch.bfloat16),
                                                  ("fp16", torch.float16)])  # fmt: skip
def test_the_base_samples_in_half_precision_from_a_lone_single_file(tmp_path, precision, dtype):
    path = save_single_file(tiny_sdxl_components(0), tmp_path / "base.safetensors", torch.float16)
    sampler = Sampler(check_model_path(path), tiny_config(precision=precision), tmp_path,
                      [Checkpoint("base", 0, None)])  # fmt: skip
    sampler.use(Checkpoint("base", 0, None))
    assert sampler.parts.unet.dtype == dtype and sampler.parts.vae.dtype == torch.float32
    (picture,) = sampler.sample([Job("p", "1girl, smile", 0)])
    pixels = np.asarray(picture, dtype=np.float32)
    assert picture.size == (64, 64) and np.isfinite(pixels).all() and pixels.std() > 1


def test_the_vae_decodes_in_fp32_under_fp16_and_on_a_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert decode_dtype(torch.bfloat16, cpu) == decode_dtype(torch.float16, cpu) == torch.float32
    assert decode_dtype(torch.float16, gpu) == torch.float32
    assert decode_dtype(torch.bfloat16, gpu) == torch.bfloat16
    assert decode_dtype(torch.float32, gpu) == torch.float32


def test_the_decode_is_the_pipelines_own(tmp_path):
    path = save_single_file(tiny_sdxl_components(0), tmp_path / "base.safetensors", torch.float32)
    sampler = Sampler(check_model_path(path), tiny_config(precision="fp32"), tmp_path,
                      [Checkpoint("base", 0, None)])  # fmt: skip
    sampler.use(Checkpoint("base", 0, None))
    (ours,) = sampler.sample([Job("p", "1girl, smile", 3)])
    latents = initial_latents(3, sampler.latent_shape((64, 64)))[None]
    out = sampler.pipe(**sampler.conditioning(["1girl, smile"]), latents=latents,
                       num_inference_steps=sampler.cfg.steps, guidance_scale=sampler.cfg.cfg_scale,
                       width=64, height=64, output_type="pil")  # fmt: skip
    assert np.array_equal(np.asarray(ours), np.asarray(out.images[0]))
