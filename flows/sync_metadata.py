"""Flow `sync-metadata`: a new metadata store snapshot from the danbooru API.

Brings the store up to date, then starts the dataset rebuild deployment when the snapshot
changed.
Run it: `python -m flows.sync_metadata --config sync.toml [--set k=v] [--rebuild NAME]`.
`deployment()` is its daily scheduled deployment (registered by `deployments/`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.deployments.runner import RunnerDeployment

from kohaku.metadata.config import SyncConfig, load_sync_config
from tasks.metadata import sync_task, trigger_rebuild_task

NAME, CRON = "daily", "0 3 * * *"  # 03:00 every day
REBUILD = "build-dataset/kohaku"  # the dataset deployment started after a changed snapshot


@flow(name="sync-metadata", log_prints=True)
def sync_metadata_flow(
    config: SyncConfig | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    rebuild_deployment: str | None = None,
) -> dict:
    """Sync the metadata store; returns the new snapshot id and what changed.

    Args:
        config: the whole sync config; empty = read from `config_file` and `overrides`
        config_file: a sync TOML on the worker's disk (`store`, `api_url`, `[fetch]`)
        overrides: fields to override, `field=value` (TOML values), e.g. `recent_window=20000`
        rebuild_deployment: `flow/deployment` to start when the snapshot changed, e.g.
            `build-dataset/kohaku`; empty = none
    """
    if config is None:
        config = load_sync_config(Path(config_file) if config_file else None, overrides or [])
    result = sync_task(config)
    rows = [{"field": k, "value": str(v)} for k, v in result.counts.items()]
    create_table_artifact(rows, key="metadata-sync", description=f"snapshot {result.snapshot}")
    out = {"snapshot": result.snapshot, "parent": result.parent, "rebuild_run": None}
    if rebuild_deployment and result.snapshot != result.parent:
        out["rebuild_run"] = trigger_rebuild_task(rebuild_deployment)
    elif rebuild_deployment:
        get_run_logger().info("snapshot unchanged: no rebuild started")
    return out


def deployment(
    config_file: str | Path, rebuild: str | None = REBUILD, cron: str = CRON
) -> RunnerDeployment:
    """The scheduled deployment `sync-metadata/daily` (serve it with `prefect.serve`)."""
    params = {"config_file": str(Path(config_file).resolve()), "rebuild_deployment": rebuild}
    return sync_metadata_flow.to_deployment(name=NAME, cron=cron, parameters=params,
                                            tags=["cpu", "network", "schedule"])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="sync TOML")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a field: field=value (TOML value)")  # fmt: skip
    parser.add_argument("--rebuild", help="deployment to start after a changed snapshot")
    args = parser.parse_args(argv)
    config_file = str(args.config) if args.config else None
    print(sync_metadata_flow(config_file=config_file, overrides=args.overrides,
                             rebuild_deployment=args.rebuild))  # fmt: skip


if __name__ == "__main__":
    main()
