"""UI reports shared by the flows: a summary table per stage (state, counts, failures,
timings) and the pipeline's ledger, one row per stage saying which ran, which was
reused, and which failed and why."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import State

from kohaku.stage import Manifest


class StageFailed(RuntimeError):
    """A stage's task failed; names the stage for the pipeline's ledger."""

    def __init__(self, stage: str, error: str):
        super().__init__(f"stage {stage} failed: {error}")
        self.stage, self.error = stage, error


def stage_row(stage: str, state: str, manifest: Manifest | None = None, error: str = "") -> dict:
    """One ledger row: a stage, its state, its scalar counts, its seconds, and the error
    of a failed stage."""
    counts = manifest.counts if manifest else {}
    scalars = {k: v for k, v in counts.items() if isinstance(v, int | float | str | None)}
    seconds = manifest.timings.get("total") if manifest else None
    return {"stage": stage, "state": state, "seconds": seconds,
            "failed": counts.get("failed", 0), "error": error[:300],
            "counts": ", ".join(f"{k}={v}" for k, v in scalars.items())}  # fmt: skip


def finished(stage: str, state: State) -> Manifest:
    """The manifest of a stage task's final state, after its summary table artifact
    (Completed: it ran, Cached: it was reused); a failed stage raises `StageFailed`, from
    the stage's own exception (a config or input error stays one line on a command line)."""
    if not state.is_completed():
        cause = state.result(raise_on_failure=False)
        raise StageFailed(stage, error_of(state)) from (
            cause if isinstance(cause, BaseException) else None
        )
    manifest = state.result()
    row = stage_row(stage, state.name, manifest)
    create_table_artifact([row], key=f"{stage}-summary", description=f"{stage}: summary")
    return manifest


def error_of(state: State) -> str:
    """The one-line error of a failed state: its exception's type and message."""
    try:
        state.result()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return state.message or state.name


def failed_row(part: str, state: State) -> dict:
    """The ledger row of a failed pipeline part: the stage that failed and why."""
    try:
        state.result()
    except StageFailed as exc:
        return stage_row(exc.stage, "Failed", error=exc.error)
    except Exception as exc:
        return stage_row(part, "Failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    return stage_row(part, state.name, error=state.message or "")


def report_ledger(rows: list[dict]) -> None:
    """The pipeline's ledger: every stage's state, counts and, for a failed one, why."""
    create_table_artifact(rows, key="pipeline-ledger", description="pipeline: stages")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines = [f"- **{r['stage']}** ({r['state']}): {r['error']}" for r in failed]
        text = "## Failed stages\n" + "\n".join(lines)
        create_markdown_artifact(text, key="pipeline-failures", description="pipeline: failures")
