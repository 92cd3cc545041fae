"""Flow `pipeline`: the whole run as one flow of stage subflows: build-dataset (sample,
tag), images (download, buckets) and, when the config has those sections, train and
evaluate. Every stage task is cached on its inputs, so a retried or repeated run
executes only the stages that failed or whose inputs changed; the ledger artifact says
which stage ran, which was reused, and which failed and why.
Run it: `python -m flows.pipeline --config run.toml`."""

from __future__ import annotations

import time
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from flows.build_dataset import build_dataset
from flows.evaluate import evaluate
from flows.images import images_flow
from flows.params import config_from, config_parser, documented, resolve
from flows.report import failed_row, report_ledger, stage_row
from flows.train import train
from kohaku.cli.common import one_line_errors
from kohaku.config import RunConfig, stage_section
from kohaku.stage import read_manifest

RUNNING = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
UNFINISHED = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=RUNNING)))
STAGES = {"build-dataset": ("sample", "tag"), "images": ("download", "buckets"),
          "train": ("train",), "evaluate": ("evaluate",)}  # fmt: skip


@flow(name="pipeline", log_prints=True)
@documented
def pipeline(
    config: RunConfig | None = None,
    shard_size: int = 2000,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Metadata to captions to images to a trained LoKr and its sample grids; returns each
    part's summary.

    Args:
        shard_size: posts per download task (a shard's ledger is its resume point)
    """
    config = resolve(config, preset, config_file, overrides)
    stage_section(config, "sample")  # the first stage's section: one error before any runs
    parts = {"build-dataset": build_dataset, "images": images_flow(config)}
    parts |= {"train": train} if config.train is not None else {}
    parts |= {"evaluate": evaluate} if config.evaluate is not None else {}
    started, rows, out = time.time(), [], {}
    for name, subflow in parts.items():
        extra = {"shard_size": shard_size} if name == "images" else {}
        state = subflow(config, **extra, return_state=True)
        if not state.is_completed():
            report_ledger(rows + _failure_rows(config, list(parts), name, state, started))
            state.result()  # the stage's own error fails the pipeline
        out[name] = state.result()
        rows += [_row(config, stage, started) for stage in STAGES[name]]
    report_ledger(rows)
    return out


def _row(config: RunConfig, stage: str, started: float) -> dict:
    manifest = read_manifest(config.run_dir.resolve() / stage)
    ran = manifest is not None and manifest.created_at >= started
    return stage_row(stage, "ran" if ran else "reused", manifest)


def _failure_rows(config: RunConfig, parts: list[str], part: str, state, started: float) -> list:
    """The failed part's stages up to the one that failed (with its error), then the
    stages that did not run."""
    failed = failed_row(part, state)
    stages = [s for p in parts[parts.index(part) :] for s in STAGES[p]]
    at = stages.index(failed["stage"]) if failed["stage"] in stages else 0
    done = [_row(config, s, started) for s in stages[:at]]
    return [*done, failed, *(stage_row(s, "not run") for s in stages[at + 1 :])]


def wait_recorded(flow_run_id: UUID, timeout: float = 30.0, poll: float = 0.5) -> bool:
    """Waits until no task run of the flow run or its subflows is shown unfinished twice in
    a row; False after `timeout`. The server records task runs from events, behind the flow
    on a busy machine; a temporary server stopped before it has caught up loses the last
    states and logs the recorder's cancelled flush as an ERROR with its traceback."""
    deadline, quiet = time.monotonic() + timeout, 0
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))  # fmt: skip
            runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id, *(r.id for r in subflows)]))
            busy = client.read_task_runs(flow_run_filter=runs, task_run_filter=UNFINISHED)
            quiet = 0 if busy else quiet + 1
            if quiet == 2:
                return True
            time.sleep(poll)
    return False


def main(argv: list[str] | None = None) -> None:
    args = config_parser(__doc__, shards=True).parse_args(argv)
    with one_line_errors("flows.pipeline"):
        state = pipeline(config_from(args), args.shard_size, return_state=True)
        wait_recorded(state.state_details.flow_run_id)
        print(state.result())


if __name__ == "__main__":
    main()
