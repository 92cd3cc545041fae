"""Tiny SDXL checkpoints built in code (kohaku.train.tiny), shared read-only by the merge
tests: SGM single files of seeds 0-3 in float32, and one diffusers folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a model hub


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Single-file (SGM layout) float32 checkpoints named m0..m3, seeds 0..3."""
    import torch

    from kohaku.train.model import save_single_file
    from kohaku.train.tiny import tiny_sdxl_components

    root = tmp_path_factory.mktemp("tiny-files")
    return {
        f"m{seed}": save_single_file(
            tiny_sdxl_components(seed), root / f"m{seed}.safetensors", torch.float32
        )
        for seed in range(4)
    }


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 diffusers folder, seed 0 (the same weights as `tiny_files["m0"]`)."""
    from kohaku.train.tiny import write_tiny_sdxl

    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-folder") / "seed0", seed=0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors on a busy 2-core machine: thread hand-offs would dominate."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
