"""The download flow against a real local Prefect API and a local image server."""

from __future__ import annotations

from kohaku.config import validate
from kohaku.download_stage import ledger_path
from tests.download.test_download import FILES
from tests.download.test_stage import sample_stage
from tests.fetch.server import Server
from tests.test_flow import task_run_states


def test_download_flow_runs_one_task_per_shard(prefect_api, tmp_path):
    from flows.download import download

    with Server(dict(FILES)) as server:
        sample_stage(tmp_path, server)
        cfg = validate({
            "run_dir": str(tmp_path), "sample": {"source": str(tmp_path)},
            "download": {"fetch": {"allowed_hosts": ["127.0.0.1"], "retries": 0}},
        })  # fmt: skip
        state = download(cfg, shard_size=2, return_state=True)
    counts = state.result()
    assert (counts["posts"], counts["ok"], counts["failed"]) == (3, 2, 1)
    assert ledger_path(tmp_path, 0).is_file() and ledger_path(tmp_path, 1).is_file()
    runs = task_run_states(state.state_details.flow_run_id, expected=3)
    assert runs == {"download-shard": ["Completed"] * 2, "download-manifest": ["Completed"]}
