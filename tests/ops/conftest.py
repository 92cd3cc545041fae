"""The operations tests run against the session's `kohaku serve` (`served` in
tests/conftest.py, set up in tests/prefect_server.py): a real Prefect server and every
deployment served on a small demo, started the way a user starts it."""

from __future__ import annotations

import pytest

from tests.prefect_server import Served


@pytest.fixture
def ops_api(prefect_api: Served) -> Served:
    """This test's Prefect client talks to the served server, whose pipeline deployment is
    registered (the first that deployments/serve.py registers; the others follow)."""
    prefect_api.wait_for_deployment("pipeline/kohaku")
    return prefect_api
