"""Flow `images`: the sampled posts' images, one download task per shard run in parallel
(threads, or an existing Dask cluster from `[runner]`), then the bucket manifest; with a
progress bar in the terminal, a progress artifact, summary and failure tables and the
bucket histogram (a picture) in the UI.
Run it: `python -m flows.images --config run.toml` after `build-dataset`."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import Flow, flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from tqdm import tqdm

from flows.params import config_from, config_parser, documented, resolve
from flows.report import StageFailed, finished
from kohaku.buckets import OUTPUTS, histogram_markdown
from kohaku.cli.common import one_line_errors
from kohaku.config import RunConfig
from kohaku.download.run import post_count, shard_count
from tasks.images import (
    buckets_task,
    download_manifest_task,
    output_key,
    prepare_source_task,
    shard_task,
)
from tasks.policy import for_run, inputs_of
from tasks.runners import task_runner


@flow(name="images", log_prints=True)
@documented
def images(
    config: RunConfig | None = None,
    shard_size: int = 2000,
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Download, verify and resize every sampled post, then bucket them; returns the
    download counts and the bucket counts.

    Args:
        shard_size: posts per download task (a shard's ledger is its resume point)
    """
    config = resolve(config, preset, config_file, overrides, stage="images")
    run_dir, start = config.run_dir.resolve(), time.perf_counter()
    prepare_source_task(config.download, run_dir)
    shards = _download_shards(config, run_dir, shard_size)
    manifest = for_run(download_manifest_task, run_dir, "download")(
        config.download, run_dir, shard_size, time.perf_counter() - start, shards,
        output_key(config.download), return_state=True,
    )  # fmt: skip
    download = finished("download", manifest)
    _report_failures(download.counts)
    buckets = for_run(buckets_task, run_dir, "buckets")(
        run_dir, inputs_of(run_dir, "download", then="buckets"), return_state=True
    )
    counts = finished("buckets", buckets).counts
    png = (run_dir / "buckets" / OUTPUTS["histogram"]).read_bytes()
    create_markdown_artifact(histogram_markdown(png, counts["histogram"]),
                             key="bucket-histogram", description="images per bucket")  # fmt: skip
    return {"download": {"shards": len(shards)} | download.counts, "buckets": counts}


def _download_shards(config: RunConfig, run_dir: Path, shard_size: int) -> list[dict]:
    n = shard_count(run_dir, shard_size)
    upstream = inputs_of(run_dir, "sample", *(["tag"] if config.download.sidecars else []),
                         then="download")  # fmt: skip
    progress = create_progress_artifact(0.0, description=f"download: shards done of {n}")
    key = output_key(config.download)
    futures = [shard_task(run_dir, i).submit(config.download, run_dir, i, shard_size, upstream, key)
               for i in range(n)]  # fmt: skip
    with tqdm(total=post_count(run_dir), unit="img", desc="download", disable=None) as bar:
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                bar.update(future.result()["posts"])
            except Exception as exc:  # the shard's own error, after its retries
                raise StageFailed("download", f"{type(exc).__name__}: {exc}") from exc
            update_progress_artifact(progress, 100.0 * done / n)
    return [f.result() for f in futures]


def _report_failures(counts: dict) -> None:
    """The failed posts' errors, most common first (every post's row is in the ledgers)."""
    summary = {k: v for k, v in counts.items() if k != "top_errors"}
    create_table_artifact([summary], key="download-posts", description="download: posts")
    errors = [{"error": e, "posts": n} for e, n in counts["top_errors"].items()]
    if errors:
        create_table_artifact(errors, key="download-errors", description="download: failures")


def images_flow(config: RunConfig) -> Flow:
    """The flow with the task runner the config asks for."""
    return images.with_options(task_runner=task_runner(config.runner))


def main(argv: list[str] | None = None) -> None:
    args = config_parser(__doc__, shards=True).parse_args(argv)
    with one_line_errors("flows.images"):
        config = config_from(args, "images")
        print(images_flow(config)(config, args.shard_size))


if __name__ == "__main__":
    main()
