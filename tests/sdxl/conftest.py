"""Tiny SDXL folders built in code (kohaku.sdxl.tiny), shared read-only by the sdxl tests."""

from __future__ import annotations

from tests.torch_fixtures import one_torch_thread, tiny_config_dir, tiny_sdxl_dir  # noqa: F401
