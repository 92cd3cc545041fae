"""The pipeline deployment on the small demo, triggered through the API exactly as the UI
does (`run_deployment`: a flow run created from the deployment, picked up by the served
deployments), with an injected fault: the ledger names the failed stage and why, and a
retry of the same flow run (what the UI's Retry button does) executes only that stage and
those after it; then every stage's outputs are there."""

from __future__ import annotations

import json

import polars as pl

from tests.ops.flowruns import artifacts, executions, retry, run


def test_pipeline_fault_then_retry_runs_only_the_failed_stage_and_later(ops_api):
    run_dir = ops_api.demo / "fault-run"
    run_dir.mkdir()
    (run_dir / "tag").write_text("a file where the tag stage's folder must go")  # the fault

    overrides = [*ops_api.overrides, f"run_dir={json.dumps(str(run_dir))}"]
    flow_run = run("pipeline/kohaku", {"overrides": overrides})
    assert flow_run.state.is_failed()
    assert executions(flow_run.id) == {"sample": 1, "tag": 1}  # tag: one run, retried once
    found = artifacts(flow_run.id)
    ledger = {row["stage"]: row for row in _rows(found["pipeline-ledger"])}
    assert {s: r["state"] for s, r in ledger.items()} == {
        "sample": "ran", "tag": "Failed", "download": "not run", "buckets": "not run"}  # fmt: skip
    assert "FileExistsError" in ledger["tag"]["error"] and "fault-run/tag" in ledger["tag"]["error"]
    assert "**tag** (Failed)" in found["pipeline-failures"].data

    (run_dir / "tag").unlink()  # the fault is fixed
    since = retry(flow_run.id)
    assert executions(flow_run.id, since) == dict.fromkeys(
        ["tag", "prepare-source", "download-shard", "download-manifest", "buckets"], 1
    )  # not sample; prepare-source is a check that always runs
    found = artifacts(flow_run.id)
    ledger = {row["stage"]: row["state"] for row in _rows(found["pipeline-ledger"])}
    assert ledger == {"sample": "reused", "tag": "ran", "download": "ran", "buckets": "ran"}

    captions = pl.read_parquet(run_dir / "tag" / "captions.parquet")
    download = json.loads((run_dir / "download" / "manifest.json").read_text())["counts"]
    buckets = pl.read_parquet(run_dir / "buckets" / "manifest.parquet")
    assert captions.height == download["posts"] > 50
    assert buckets.height == download["ok"] == download["posts"] and download["failed"] == 0
    assert all((run_dir / path).is_file() for path in buckets["path"])
    assert {"sample-summary", "tag-summary", "download-summary", "download-posts",
            "buckets-summary", "bucket-histogram", "progress"} <= set(found)  # fmt: skip


def _rows(artifact) -> list[dict]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def test_pipeline_on_the_demo_config_trains_and_evaluates(ops_api):
    """The bundled demo's config (train and evaluate included, at toy size) run through
    the pipeline deployment: every stage completes and leaves its outputs."""
    from kohaku.demo.run import DEMO_TOML, write_demo_texts
    from kohaku.sdxl.tiny import write_tiny_sdxl

    write_tiny_sdxl(ops_api.demo / "model", seed=0)
    metadata = ops_api.demo / "metadata"  # the demo's natural-language captions (issue 14)
    write_demo_texts(metadata / "danbooru.db", metadata / "captions.jsonl")
    config = ops_api.demo / "full.toml"  # the demo's config on the ops database (300 posts)
    config.write_text(DEMO_TOML.format(split=165, first=75))
    run_dir = ops_api.demo / "full-run"
    toy = ["train.max_steps=4", "train.checkpoint_every=2", "evaluate.seeds=[0]",
           "evaluate.steps=2", "evaluate.characters=1", "evaluate.styles=1",
           # sampling (bf16, auto on a CPU, as the demo runs) was most of the test: every
           # prompt of a checkpoint in one batch (9: 1 character, 1 style, 7 quality
           # probes), at 64 px; the grids keep their size (cells of grid_cell px)
           "evaluate.batch_size=16", "evaluate.width=64", "evaluate.height=64"]  # fmt: skip
    overrides = [*ops_api.overrides, f"run_dir={json.dumps(str(run_dir))}", *toy]
    flow_run = run("pipeline/kohaku", {"config_file": str(config), "overrides": overrides})
    assert flow_run.state.is_completed(), flow_run.state.message

    found = artifacts(flow_run.id)
    ledger = {r["stage"]: r["state"] for r in _rows(found["pipeline-ledger"])}
    stages = ["sample", "tag", "download", "buckets", "train", "evaluate"]
    assert ledger == dict.fromkeys(stages, "ran")
    # every artifact travels in a server event, which Prefect refuses over 1.5 MB
    sizes = {key: len(json.dumps(a.data)) for key, a in found.items()}
    assert max(sizes.values()) < 500_000, sizes
    assert f"full size: `{run_dir.resolve() / 'evaluate/final/grid.png'}`" in (
        found["evaluate-grid-final"].data
    )
    server_log = (ops_api.demo.parent / "prefect" / "server.log").read_text()
    assert "Refusing to publish event" not in server_log
    assert all((run_dir / s / "manifest.json").is_file() for s in stages)
    assert (run_dir / "train" / "lokr.safetensors").is_file()
    assert (run_dir / "evaluate" / "comparison.png").is_file()
