"""Shared fixtures: a synthetic danbooru2023 database made by the project's generator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kohaku.demo.synth import generate_danbooru_db

# Prefect (tests/test_flow.py) must never phone home nor share a user's Prefect home.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def synth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 posts, ids sparse over [1, 3300], read-only for tests."""
    path = tmp_path_factory.mktemp("metadata") / "danbooru.db"
    generate_danbooru_db(path, 3000, seed=7)
    return path


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """A real local Prefect API (temporary server on SQLite) for flow tests."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = str(tmp_path_factory.mktemp("prefect-home"))
    with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(server_startup_timeout=120):
        yield
