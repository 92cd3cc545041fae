"""The train flow against a real local Prefect API: the trainer runs as a child process,
its progress and metrics reach the UI as artifacts; a wrong model path fails at once, in
one attempt, with a one-line message; `python -m flows.train` errors are one line."""

from __future__ import annotations

import json

import pytest

from kohaku.config import validate
from kohaku.errors import user_message
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
    assert "INFO LyCORIS: " in (run / "logs" / "train.log").read_text()  # not in the task log
    lines = _log_lines(flow_run_id)  # the trainer's lines, streamed to the task's log
    assert any("kohaku-train " in line for line in lines)
    assert not [line for line in lines if "LyCORIS" in line]


def _log_lines(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_a_wrong_model_path_fails_in_one_attempt(prefect_api, tmp_path):
    """An input error is never retried (it took 2 min with 3 retries 30 s apart)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.report import StageFailed
    from flows.train import train

    run = write_training_run(tmp_path, n=2, buckets=((64, 64),))
    missing = tmp_path / "sdxl.safetensors"
    cfg = validate({"run_dir": str(run), "train": {"model": {"path": str(missing)}}}, "train")
    state = train(cfg, return_state=True)
    with pytest.raises(StageFailed) as err:
        state.result()
    assert user_message(err.value) == (
        f"stage train failed: InputError: model path {missing} does not exist"
    )
    flow_run_id = state.state_details.flow_run_id
    assert task_run_states(flow_run_id, expected=1) == {"train": ["Failed"]}
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert [r.run_count for r in runs] == [1]


def test_python_m_flows_train_config_error_is_one_line(tmp_path, capsys):
    from flows.train import main

    (tmp_path / "run.toml").write_text("[sample]\nsource = 'db'\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(tmp_path / "run.toml")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "flows.train: error: the config has no [train] section, which the train stage reads\n"
    )
