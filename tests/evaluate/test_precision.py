"""Evaluate's sampling precision: `auto` is bf16 on the CPU and fp16 on a GPU; the base is
streamed in that dtype (a single file with nothing beside it) and the pictures are finite:
an fp16 VAE decodes in fp32 (SDXL's force_upcast), a bf16 one cannot overflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kohaku.evaluate.generate import Checkpoint, Job, Sampler, resolve_dtype
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
    assert sampler.parts.unet.dtype == sampler.parts.vae.dtype == dtype
    (picture,) = sampler.sample([Job("p", "1girl, smile", 0)])
    pixels = np.asarray(picture, dtype=np.float32)
    assert picture.size == (64, 64) and np.isfinite(pixels).all() and pixels.std() > 1
    assert sampler.parts.vae.dtype == dtype  # back from the fp32 decode
