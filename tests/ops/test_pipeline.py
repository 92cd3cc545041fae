"""The pipeline deployment on the small demo, triggered through the API exactly as the UI
does (`run_deployment`: a flow run created from the deployment and picked up by the
served deployments), with an injected fault: the failed stage is named in the ledger, and
a retry of the same flow run (what the UI's Retry button does) executes only that stage
and those after it; then every stage's outputs are there."""

from __future__ import annotations

import json

import polars as pl

from tests.ops.flowruns import artifacts, executions, retry, run


def test_pipeline_fault_retry_then_outputs(ops_api):
    run_dir = ops_api.demo / "run"  # the demo config's run dir: the deployment's defaults
    run_dir.mkdir(exist_ok=True)
    (run_dir / "buckets").write_text("a file where the buckets folder must go")  # the fault

    flow_run = run("pipeline/kohaku", {})
    assert flow_run.state.is_failed()
    data_stages = ["sample", "tag", "prepare-source", "download-shard", "download-manifest"]
    assert executions(flow_run.id) == dict.fromkeys([*data_stages, "buckets"], 1)
    found = artifacts(flow_run.id)
    ledger = {row["stage"]: row for row in _rows(found["pipeline-ledger"])}
    assert [ledger[s]["state"] for s in ("sample", "tag", "images")] == ["ran", "ran", "Failed"]
    assert "FileExistsError" in ledger["images"]["error"] and "buckets" in ledger["images"]["error"]
    assert "images" in found["pipeline-failures"].data

    (run_dir / "buckets").unlink()  # the fault is fixed
    since = retry(flow_run.id)
    ran = executions(flow_run.id, since)
    # the failed stage and those after it; prepare-source is a check that always runs
    assert ran == {"prepare-source": 1, "buckets": 1, "train": 1, "evaluate": 1}

    captions = pl.read_parquet(run_dir / "tag" / "captions.parquet")
    download = json.loads((run_dir / "download" / "manifest.json").read_text())["counts"]
    buckets = pl.read_parquet(run_dir / "buckets" / "manifest.parquet")
    assert captions.height == download["posts"] > 50 and download["failed"] == 0
    assert buckets.height == download["ok"] == download["posts"]
    assert json.loads((run_dir / "train" / "manifest.json").read_text())["counts"]["steps"] == 4
    assert (run_dir / "train" / "lokr.safetensors").stat().st_size > 0
    assert (run_dir / "evaluate" / "final" / "grid.png").is_file()
    found = artifacts(flow_run.id)
    ledger = {row["stage"]: row["state"] for row in _rows(found["pipeline-ledger"])}
    assert ledger == {"sample": "reused", "tag": "reused", "download": "reused",
                      "buckets": "ran", "train": "ran", "evaluate": "ran"}  # fmt: skip
    assert {"sample-summary", "download-summary", "buckets-summary", "bucket-histogram",
            "train-summary", "train-loss", "evaluate-summary",
            "evaluate-grid-final"} <= set(found)  # fmt: skip


def _rows(artifact) -> list[dict]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data
