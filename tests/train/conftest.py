"""Tiny SDXL folders built in code (kohaku.train.tiny), shared read-only by the train tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may come from a model hub; the loaders also get local_files_only=True.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 diffusers SDXL folder with seed-0 weights; read-only for tests."""
    from kohaku.train.tiny import write_tiny_sdxl

    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "seed0", seed=0)


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same shapes with seed-1 weights: the config folder for single-file loads, whose
    own weights must never end up in what a single file loads; read-only for tests."""
    from kohaku.train.tiny import write_tiny_sdxl

    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "seed1", seed=1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is ~100x faster than two on a busy 2-core machine (thread
    hand-offs dominate); child processes get OMP_NUM_THREADS=1 from the tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
