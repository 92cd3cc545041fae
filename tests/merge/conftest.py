"""Tiny SDXL checkpoints built in code (kohaku.sdxl.tiny), shared read-only by the merge
tests: SGM single files of seeds 0-3 in float32, and one diffusers folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torch_fixtures import one_torch_thread, tiny_sdxl_dir  # noqa: F401


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Single-file (SGM layout) float32 checkpoints named m0..m3, seeds 0..3."""
    import torch

    from kohaku.sdxl.model import save_single_file
    from kohaku.sdxl.tiny import tiny_sdxl_components

    root = tmp_path_factory.mktemp("tiny-files")
    return {
        f"m{seed}": save_single_file(
            tiny_sdxl_components(seed), root / f"m{seed}.safetensors", torch.float32
        )
        for seed in range(4)
    }
