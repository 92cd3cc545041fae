"""Shared fixtures: a synthetic danbooru2023 database made by the project's generator, and
the session's one Prefect server (`kohaku serve`) for every flow test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kohaku.demo.synth import generate_danbooru_db
from tests.prefect_server import Launched, Served, drain_workers, kohaku_serve

# Prefect (tests/test_flow.py) must never phone home nor share a user's Prefect home.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def synth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 posts, ids sparse over [1, 3300], read-only for tests."""
    path = tmp_path_factory.mktemp("metadata") / "danbooru.db"
    generate_danbooru_db(path, 3000, seed=7)
    return path


@pytest.fixture(scope="session", autouse=True)
def _kohaku_serve(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The session's `kohaku serve` (tests/prefect_server.py), started before the first
    test when a collected test needs it: its start (~20 s, most of it CPU on one core)
    then overlaps the tests before the first flow test instead of delaying that one."""
    if not any("served" in item.fixturenames for item in request.session.items):
        yield None
        return
    with kohaku_serve(tmp_path_factory.mktemp("ops")) as launched:
        yield launched


@pytest.fixture(scope="session")
def served(_kohaku_serve: Launched) -> Served:
    """A real Prefect server and the served deployments on a small demo, once the server
    answers; the operations tests (`ops_api`) also wait for its deployments."""
    return _kohaku_serve.ready()


@pytest.fixture(scope="session")
def prefect_api(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real local Prefect API for flow tests: the session's one server (`served`), this
    process with its own Prefect home."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = str(tmp_path_factory.mktemp("prefect-home"))
    with temporary_settings({PREFECT_HOME: home, PREFECT_API_URL: served.api}):
        yield served
        drain_workers()
