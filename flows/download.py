"""Flow `download`: the sampled posts' images, one task per shard, run in parallel
(Prefect's task runner), with a progress artifact and a summary table.
Run it: `python -m flows.download --config run.toml` after `build-dataset`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed

from kohaku.config import RunConfig, load_config
from kohaku.download_stage import shard_count
from tasks.images import download_manifest_task, download_shard_task


@flow(name="download", log_prints=True)
def download(config: RunConfig, shard_size: int = 2000) -> dict:
    """Download, verify and resize every sampled post; returns the stage counts."""
    run_dir, start = config.run_dir.resolve(), time.perf_counter()
    n = shard_count(run_dir, shard_size)
    progress = create_progress_artifact(0.0, description=f"download: shards done of {n}")
    futures = [download_shard_task.submit(config.download, run_dir, i, shard_size)
               for i in range(n)]  # fmt: skip
    for done, future in enumerate(as_completed(futures), start=1):
        future.result()
        update_progress_artifact(progress, 100.0 * done / n)
    manifest = download_manifest_task(
        config.download, run_dir, shard_size, time.perf_counter() - start
    )
    counts = {k: v for k, v in manifest.counts.items() if k != "top_errors"}
    create_table_artifact([counts], key="download-summary", description="download: posts")
    errors = [{"error": e, "posts": n} for e, n in manifest.counts["top_errors"].items()]
    if errors:
        create_table_artifact(errors, key="download-errors", description="download: failures")
    return manifest.counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--shard-size", type=int, default=2000)
    args = parser.parse_args(argv)
    print(download(load_config(args.config, args.preset, args.overrides), args.shard_size))


if __name__ == "__main__":
    main()
