"""Tiny SDXL folders built in code (kohaku.train.tiny), shared read-only by the train tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torch_fixtures import one_torch_thread, tiny_sdxl_dir  # noqa: F401


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same shapes with seed-1 weights: the config folder for single-file loads, whose
    own weights must never end up in what a single file loads; read-only for tests."""
    from kohaku.train.tiny import write_tiny_sdxl

    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl") / "seed1", seed=1)
