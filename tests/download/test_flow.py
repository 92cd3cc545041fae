"""The images flow against a real local Prefect API and a local image server: threads, and
a real Dask cluster reached by its scheduler address."""

from __future__ import annotations

import base64
import re

from kohaku.config import validate
from kohaku.download.run import ledger_path
from tests.download.test_run import sample_stage
from tests.download.test_shard import FILES
from tests.fetch.server import Server
from tests.test_flow import task_run_states


def run_images(tmp_path, runner: dict | None = None):
    from flows.images import images_flow

    with Server(dict(FILES)) as server:
        sample_stage(tmp_path, server)
        cfg = validate({
            "run_dir": str(tmp_path), "sample": {"source": str(tmp_path)},
            "download": {"fetch": {"allowed_hosts": ["127.0.0.1"], "retries": 0}},
            "runner": runner or {},
        })  # fmt: skip
        return images_flow(cfg)(cfg, shard_size=2, return_state=True)


def artifacts(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {a.key or a.type: a for a in found}


def test_images_flow_runs_one_task_per_shard_then_buckets(prefect_api, tmp_path):
    state = run_images(tmp_path)
    counts = state.result()
    download = counts["download"]
    assert (download["posts"], download["ok"], download["failed"], download["shards"]) == (
        3, 2, 1, 2)  # fmt: skip
    assert counts["buckets"]["images"] == 2
    assert ledger_path(tmp_path, 0).is_file() and ledger_path(tmp_path, 1).is_file()
    flow_run_id = state.state_details.flow_run_id
    runs = task_run_states(flow_run_id, expected=5)
    assert runs == {"prepare-source": ["Completed"], "download-shard": ["Completed"] * 2,
                    "download-manifest": ["Completed"], "buckets": ["Completed"]}  # fmt: skip
    found = artifacts(flow_run_id)
    assert {"download-summary", "download-errors", "bucket-histogram", "progress"} <= set(found)
    embedded = re.search(r"base64,([A-Za-z0-9+/=]+)\)", found["bucket-histogram"].data)
    png = base64.b64decode(embedded[1])
    assert png == (tmp_path / "buckets" / "histogram.png").read_bytes()
    assert found["progress"].data == 100.0


def test_images_flow_on_an_existing_dask_cluster(prefect_api, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:  # fmt: skip
        state = run_images(tmp_path, {"kind": "dask", "address": cluster.scheduler_address})
        counts = state.result()
        assert (counts["download"]["ok"], counts["buckets"]["images"]) == (2, 2)
        shards = cluster.scheduler.task_prefixes["download_shard_task"]
        assert shards.all_durations["compute"] > 0  # the shards ran on the cluster
    runs = task_run_states(state.state_details.flow_run_id, expected=5)
    assert runs["download-shard"] == ["Completed"] * 2
