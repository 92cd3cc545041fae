"""Reading flow runs back from the Prefect API: trigger a deployment as the UI does, and
count which stage tasks executed (Completed or Failed) or were reused (Cached)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime

EXECUTED = {"Completed", "Failed"}


def run(name: str, parameters: dict, timeout: float = 300):
    """A flow run of deployment `name`, created through the API (what the UI's Run button
    does) and waited for."""
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=timeout, poll_interval=1)


def tree(flow_run_id) -> list:
    """The flow run and its subflow runs, recursively."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    ids, todo = [flow_run_id], [flow_run_id]
    with get_client(sync_client=True) as client:
        while todo:
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=todo)))  # fmt: skip
            todo = [c.id for c in children if c.id not in ids]
            ids += todo
    return ids


def task_runs(flow_run_id, since: datetime | None = None, settle: float = 1.0) -> list:
    """The stage task runs under a flow run (subflows included; not the tasks that stand
    for subflows), started after `since`, once their final states have reached the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    last, stable_since = None, time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=tree(flow_run_id))))  # fmt: skip
            found = [r for r in found if r.state and not r.state.state_details.child_flow_run_id
                     and (since is None or (r.start_time and r.start_time > since))]  # fmt: skip
            key = sorted((str(r.id), r.state.name) for r in found)
            if key != last or not all(r.state.is_final() for r in found):
                last, stable_since = key, time.monotonic()
            elif time.monotonic() - stable_since > settle:
                return found
            time.sleep(0.3)


def stage(run) -> str:
    name = run.name.rsplit("-", 1)[0]  # sample-f6f -> sample, download-shard-0 -> download-shard
    return name


def executions(flow_run_id, since: datetime | None = None) -> Counter:
    """How many times each stage task executed (cached ones do not count)."""
    return Counter(stage(r) for r in task_runs(flow_run_id, since) if r.state.name in EXECUTED)


def cached(flow_run_id, since: datetime | None = None) -> Counter:
    return Counter(stage(r) for r in task_runs(flow_run_id, since) if r.state.name == "Cached")


def retry(flow_run_id, timeout: float = 300) -> datetime:
    """Retry a finished flow run as the UI's Retry button does (its state set back to
    Scheduled, AwaitingRetry); wait for its new final state; returns when it was retried."""
    from prefect.client.orchestration import get_client
    from prefect.states import AwaitingRetry

    with get_client(sync_client=True) as client:
        since = client.read_flow_run(flow_run_id).state.timestamp
        client.set_flow_run_state(flow_run_id, AwaitingRetry(message="Retry from the test"),
                                  force=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run_id).state
            if state.is_final() and state.timestamp > since:
                return since
            time.sleep(1)
    raise TimeoutError(f"flow run {flow_run_id} did not finish its retry")


def artifacts(flow_run_id) -> dict:
    """The artifacts of a flow run and its subflow runs, by key (the latest of each)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=tree(flow_run_id))),
            sort=ArtifactSort.CREATED_DESC,
        )
    return {a.key or a.type: a for a in reversed(found)}
