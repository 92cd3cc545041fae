"""Flow `evaluate`: fixed-seed sample grids and scores of a run's checkpoints, shown in
the UI (a grid per checkpoint, the side-by-side comparison, score tables and trends).
Run it: `python -m flows.evaluate --config run.toml` after `train`."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import config_from, config_parser, documented, resolve
from flows.report import finished
from kohaku.cli.common import one_line_errors
from kohaku.config import RunConfig, stage_section
from kohaku.evaluate.report import build_report
from tasks.evaluate import evaluate_task
from tasks.policy import for_run, inputs_of


@flow(name="evaluate", log_prints=True)
@documented
def evaluate(
    config: RunConfig | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Sample and score the run's checkpoints; returns the stage counts."""
    config = resolve(config, preset, config_file, overrides, stage="evaluate")
    run_dir, cfg = config.run_dir.resolve(), stage_section(config, "evaluate")
    upstream = inputs_of(run_dir, "train", "buckets", "tag", then="evaluate")
    state = for_run(evaluate_task, run_dir, "evaluate")(cfg, run_dir, upstream, return_state=True)
    manifest = finished("evaluate", state)
    report = build_report(run_dir)
    for label, markdown in report.grids.items():
        create_markdown_artifact(markdown, key=f"evaluate-grid-{label}".replace("_", "-"),
                                 description=f"evaluate: samples of {label}")  # fmt: skip
    create_markdown_artifact(report.comparison, key="evaluate-comparison",
                             description="evaluate: checkpoints side by side")  # fmt: skip
    create_table_artifact(report.scores, key="evaluate-scores", description="evaluate: scores")
    create_table_artifact(report.trend, key="evaluate-trend", description="evaluate: trend")
    create_markdown_artifact(report.trend_chart, key="evaluate-trend-chart",
                             description="evaluate: scores across checkpoints")  # fmt: skip
    return manifest.counts


def main(argv: list[str] | None = None) -> None:
    with one_line_errors("flows.evaluate"):
        print(evaluate(config_from(config_parser(__doc__).parse_args(argv), "evaluate")))


if __name__ == "__main__":
    main()
