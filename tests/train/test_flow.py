"""The train flow against a real local Prefect API: the trainer runs as a child process,
its progress and metrics reach the UI as artifacts."""

from __future__ import annotations

import json

from kohaku.config import validate
from tests.download.test_flow import artifacts
from tests.test_flow import task_run_states
from tests.train.rundir import write_training_run


def test_train_flow(prefect_api, tiny_sdxl_dir, tmp_path, monkeypatch):
    from flows.train import train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = write_training_run(tmp_path, n=4, buckets=((64, 64),))
    cfg = validate({
        "run_dir": str(run), "sample": {"source": str(run)},
        "train": {"model": {"path": str(tiny_sdxl_dir)}, "batch_size": 2, "max_steps": 3,
                  "optim": {"kind": "adamw", "warmup_steps": 0}, "log_every": 1},
    })  # fmt: skip
    state = train(cfg, return_state=True)
    assert state.result()["steps"] == 3
    flow_run_id = state.state_details.flow_run_id
    assert task_run_states(flow_run_id, expected=1) == {"train": ["Completed"]}
    found = artifacts(flow_run_id)
    assert found["progress"].data == 100.0
    rows = found["train-metrics"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert [row["step"] for row in rows] == [1, 2, 3]
