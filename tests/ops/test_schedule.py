"""The scheduled dataset rebuild: its deployment carries the weekly cron, and the
server's scheduler creates its scheduled runs (with the deployment's parameters)."""

from __future__ import annotations

import time


def test_rebuild_deployment_creates_its_scheduled_runs(ops_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deployment = ops_api.wait_for_deployment("build-dataset/weekly-rebuild")  # the last one
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]
    assert deployment.parameters["config_file"] == str(ops_api.demo / "data.toml")
    deadline, runs = time.monotonic() + 60, []
    with get_client(sync_client=True) as client:
        while not runs and time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    )
                ),  # fmt: skip
            )
            time.sleep(0.5)
    assert runs, "the scheduler created no run"
    starts = sorted(r.expected_start_time for r in runs)
    assert all(t.weekday() == 0 and (t.hour, t.minute) == (3, 0) for t in starts)  # Mondays 3:00
    assert all(r.parameters["config_file"] == str(ops_api.demo / "data.toml") for r in runs)
