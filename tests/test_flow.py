"""The build-dataset flow against a real local Prefect API (the session's server, `prefect_api`):
caching, rerun after a failure, and a removed output."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from kohaku.config import RunConfig, validate


def make_config(source: Path, run_dir: Path, **tag) -> RunConfig:
    return validate({
        "run_dir": str(run_dir),
        "sample": {"source": str(source), "seed": 3,
                   "ranges": [{"start": 0, "end": 1600, "count": 600}, {"start": 1600}]},
        "tag": {"layout": "epsilon", **tag},
    })  # fmt: skip


def task_run_states(flow_run_id, expected: int = 2, timeout: float = 30) -> dict[str, list[str]]:
    """Task-run state names of one flow run, read back from the Prefect API (task runs
    reach the API as events, a moment after the flow returns)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            final = [r for r in runs if r.state and r.state.is_final()]
            if len(final) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    out: dict[str, list[str]] = {}
    for run in final:
        out.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name)
    return out


def run_flow(cfg: RunConfig):
    from flows.build_dataset import build_dataset

    state = build_dataset(cfg, return_state=True)
    return state, task_run_states(state.state_details.flow_run_id)


def test_second_run_is_cached(prefect_api, synth_db: Path, tmp_path: Path):
    cfg = make_config(synth_db, tmp_path / "run")
    state, tasks = run_flow(cfg)
    assert state.is_completed()
    assert state.result() == {"sample": "Completed", "tag": "Completed"}
    assert tasks == {"sample": ["Completed"], "tag": ["Completed"]}
    captions = tmp_path / "run" / "tag" / "captions.parquet"
    before = captions.stat().st_mtime_ns

    state, tasks = run_flow(cfg)
    assert tasks == {"sample": ["Cached"], "tag": ["Cached"]}
    assert captions.stat().st_mtime_ns == before

    # a changed tag field re-executes the tag stage only
    state, tasks = run_flow(make_config(synth_db, tmp_path / "run", layout="delta"))
    assert tasks == {"sample": ["Cached"], "tag": ["Completed"]}


def test_rerun_after_failure_executes_only_the_failed_stage(
    prefect_api, synth_db: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    cfg = make_config(synth_db, run_dir, layout="hakubooru")
    run_dir.mkdir()
    (run_dir / "tag").write_text("a file where the tag stage's folder must go")

    state, tasks = run_flow(cfg)
    assert state.is_failed()
    assert tasks["sample"] == ["Completed"]
    assert tasks["tag"] == ["Failed"]  # after its retry
    assert (run_dir / "sample" / "manifest.json").is_file()

    (run_dir / "tag").unlink()  # the fault is fixed
    state, tasks = run_flow(cfg)
    assert state.is_completed()
    assert tasks == {"sample": ["Cached"], "tag": ["Completed"]}
    assert (run_dir / "tag" / "captions.parquet").is_file()


def test_removed_output_is_rebuilt_not_served_from_cache(
    prefect_api, synth_db: Path, tmp_path: Path
):
    cfg = make_config(synth_db, tmp_path / "run", layout="delta", escape_brackets=True)
    assert run_flow(cfg)[0].is_completed()
    shutil.rmtree(tmp_path / "run" / "tag")
    state, tasks = run_flow(cfg)
    assert tasks == {"sample": ["Cached"], "tag": ["Completed"]}
    assert (tmp_path / "run" / "tag" / "captions.parquet").is_file()


def test_a_text_caption_file_rewritten_in_place_reexecutes_the_tag_stage(
    prefect_api, synth_db: Path, tmp_path: Path
):
    """`tag.text_captions` names the file by its path: the task's cache key carries the
    file's fingerprint, so new texts at the same path are no stale cache hit."""
    import os

    import polars as pl

    texts = tmp_path / "texts.parquet"
    ids = list(range(1, 3301))

    def write(word: str) -> None:
        pl.DataFrame({"id": ids, "text": [f"{word} {i}" for i in ids]}).write_parquet(texts)
        os.utime(texts, ns=(1_000_000_000, 1_000_000_000))  # the same mtime, on purpose

    write("first")
    cfg = make_config(synth_db, tmp_path / "run", text_captions=str(texts))
    assert run_flow(cfg)[1] == {"sample": ["Completed"], "tag": ["Completed"]}
    assert run_flow(cfg)[1] == {"sample": ["Cached"], "tag": ["Cached"]}
    write("other")
    assert run_flow(cfg)[1] == {"sample": ["Cached"], "tag": ["Completed"]}
    captions = pl.read_parquet(tmp_path / "run" / "tag" / "captions.parquet")
    assert captions["text"].drop_nulls().str.starts_with("other ").all()
