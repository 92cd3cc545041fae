"""The operations tests run against the session's `kohaku serve` (`served` in
tests/conftest.py, set up in tests/prefect_server.py): a real Prefect server and every
deployment served on a small demo, started the way a user starts it."""

from __future__ import annotations

import pytest

from tests.prefect_server import Served


@pytest.fixture
def ops_api(prefect_api: Served) -> Served:
    """This test's Prefect client talks to the served server, whose deployments are
    registered (deployments/serve.py registers the pipeline's first, the rebuild's last)."""
    for name in ("pipeline/kohaku", "build-dataset/weekly-rebuild"):
        prefect_api.wait_for_deployment(name)
    return prefect_api
