"""Fixtures of the torch test packages (sdxl, train, evaluate, merge), imported by their
conftest files so that tests of the data stages never import torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing may come from a model hub; the loaders also get local_files_only=True.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models: one thread is ~100x faster than two on a busy 2-core machine (thread
    hand-offs dominate). Session-wide, so that session fixtures that train, sample or score
    get it too; child processes get OMP_NUM_THREADS=1 from the tests."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 diffusers SDXL folder with seed-0 weights; read-only for tests."""
    from kohaku.sdxl.tiny import write_tiny_sdxl

    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "seed0", seed=0)


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same shapes with seed-1 weights: the config folder for single-file loads, whose
    own weights must never end up in what a single file loads; read-only for tests."""
    from kohaku.sdxl.tiny import write_tiny_sdxl

    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "seed1", seed=1)
