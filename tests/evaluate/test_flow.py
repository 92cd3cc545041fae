"""The evaluate flow against a real local Prefect API: grids, comparison, score tables and
the trend reach the UI as artifacts."""

from __future__ import annotations

import base64
import re
import shutil

from kohaku.config import validate
from tests.download.test_flow import artifacts
from tests.evaluate.conftest import tiny_config
from tests.test_flow import task_run_states


def test_evaluate_flow(prefect_api, eval_run, tiny_clip_dir, tmp_path):
    from flows.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(eval_run, run)
    cfg = tiny_config(checkpoints="final", clip_model=tiny_clip_dir)
    config = validate({"run_dir": str(run), "sample": {"source": str(run)},
                       "evaluate": cfg.model_dump(mode="json")})  # fmt: skip
    state = evaluate(config, return_state=True)
    assert state.result()
    flow_run_id = state.state_details.flow_run_id
    assert task_run_states(flow_run_id, expected=1) == {"evaluate": ["Completed"]}
    found = artifacts(flow_run_id)
    assert {"evaluate-grid-final", "evaluate-comparison", "evaluate-scores", "evaluate-trend",
            "evaluate-trend-chart"} <= set(found)  # fmt: skip
    png = re.search(r"base64,([A-Za-z0-9+/=]+)\)", found["evaluate-grid-final"].data)[1]
    assert base64.b64decode(png) == (run / "evaluate" / "final" / "grid.png").read_bytes()
    assert "clip_score" in found["evaluate-scores"].data
