"""Flow `build-dataset`: sample -> tag, cached so that a rerun executes only what
failed or changed. Run it: `python -m flows.build_dataset --config run.toml`."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.params import config_from, config_parser, documented, resolve
from flows.report import finished
from kohaku.cli.common import one_line_errors
from kohaku.config import RunConfig, stage_section
from kohaku.sample.run import sample_inputs
from tasks.dataset import sample_task, tag_task
from tasks.policy import file_key, for_run


@flow(name="build-dataset", log_prints=True)
@documented
def build_dataset(
    config: RunConfig | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, str]:
    """Build the caption table of a run; returns each stage's final state name
    (Completed when it ran, Cached when it was reused)."""
    config = resolve(config, preset, config_file, overrides, stage="build-dataset")
    run_dir, cfg = config.run_dir.resolve(), stage_section(config, "sample")
    sample = for_run(sample_task, run_dir, "sample")(
        cfg, run_dir, sample_inputs(cfg), config.resources, return_state=True
    )
    tag = for_run(tag_task, run_dir, "tag")(
        config.tag, run_dir, finished("sample", sample), config.resources,
        file_key(config.tag.text_captions), return_state=True,
    )  # fmt: skip
    finished("tag", tag)
    get_run_logger().info("dataset ready: %s", run_dir / "tag" / "captions.parquet")
    return {"sample": sample.name, "tag": tag.name}


def main(argv: list[str] | None = None) -> None:
    with one_line_errors("flows.build_dataset"):
        print(build_dataset(config_from(config_parser(__doc__).parse_args(argv), "build-dataset")))


if __name__ == "__main__":
    main()
