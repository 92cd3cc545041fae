"""UI reports shared by the flows: a summary table per stage (state, counts, failures,
timings) and the pipeline's ledger, one row per stage saying which failed and why."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import State

from kohaku.stage import Manifest


def stage_row(stage: str, state: str, manifest: Manifest | None = None, error: str = "") -> dict:
    """One ledger row: a stage, its final state (Completed ran, Cached reused), its scalar
    counts, its seconds, and the error of a failed stage."""
    counts = manifest.counts if manifest else {}
    scalars = {k: v for k, v in counts.items() if isinstance(v, int | float | str | None)}
    seconds = manifest.timings.get("total") if manifest else None
    return {"stage": stage, "state": state, "seconds": seconds,
            "failed": counts.get("failed", 0), "error": error[:300],
            "counts": ", ".join(f"{k}={v}" for k, v in scalars.items())}  # fmt: skip


def report_stage(stage: str, state: State, manifest: Manifest) -> dict:
    """The stage's summary table artifact; returns its ledger row."""
    row = stage_row(stage, state.name, manifest)
    create_table_artifact([row], key=f"{stage}-summary", description=f"{stage}: summary")
    return row


def failed_row(stage: str, state: State) -> dict:
    """The ledger row of a failed stage: its state and the exception's one-line message."""
    try:
        state.result()
        error = state.message or ""
    except BaseException as exc:  # the stage's own exception, re-raised by result()
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return stage_row(stage, state.name, error=error)


def report_ledger(rows: list[dict]) -> None:
    """The pipeline's ledger: every stage's state, counts and, for a failed one, why."""
    create_table_artifact(rows, key="pipeline-ledger", description="pipeline: stages")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines = [f"- **{r['stage']}** ({r['state']}): {r['error']}" for r in failed]
        text = "## Failed stages\n" + "\n".join(lines)
        create_markdown_artifact(text, key="pipeline-failures", description="pipeline: failures")
