"""Every kohaku deployment, served from this process (the one-machine mode behind
`kohaku serve`): `pipeline/kohaku` (the whole run), one deployment per stage flow
(`build-dataset/kohaku`, `images/kohaku`, `train/kohaku`, `evaluate/kohaku`, `merge/kohaku`)
so that one stage can be run by itself on an existing run directory, and
`build-dataset/weekly-rebuild`, on a cron schedule, which rebuilds the dataset against a
metadata file that is refreshed (an unchanged file leaves every stage Cached), and, given
a sync config, `sync-metadata/daily` (flows/sync_metadata.py), which refreshes the
metadata store and starts `build-dataset/kohaku` when the snapshot changed.

Run it: `python -m deployments.serve --config run.toml [--set k=v] [--rebuild-cron CRON]`
with `PREFECT_API_URL` pointing at a server. `deployments/prefect.yaml` declares the same
deployments for work pools and workers on several machines."""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.build_dataset import build_dataset
from flows.evaluate import evaluate
from flows.images import images
from flows.merge import merge
from flows.pipeline import pipeline
from flows.train import train

NAME = "kohaku"
REBUILD = "weekly-rebuild"
REBUILD_CRON = "0 3 * * 1"  # Mondays 03:00, after a weekly metadata refresh


def deployments(config_file: Path | None = None, overrides: list[str] = (),
                rebuild_cron: str | None = REBUILD_CRON,
                sync_config: Path | None = None) -> list[RunnerDeployment]:  # fmt: skip
    """The deployments, their default parameters taken from `config_file` and
    `overrides` (each run's form can change them)."""
    params = {"overrides": list(overrides)}
    if config_file is not None:
        params["config_file"] = str(Path(config_file).resolve())
    out = [flow.to_deployment(name=NAME, parameters=params, tags=tags)
           for flow, tags in ((pipeline, ["gpu"]), (build_dataset, ["cpu"]), (images, ["cpu"]),
                              (train, ["gpu"]), (evaluate, ["gpu"]))]  # fmt: skip
    out.append(merge.to_deployment(name=NAME, tags=["cpu"]))
    if rebuild_cron and config_file is not None:
        out.append(build_dataset.to_deployment(name=REBUILD, parameters=params, cron=rebuild_cron,
                                               tags=["cpu", "schedule"]))  # fmt: skip
    if sync_config is not None:
        from flows.sync_metadata import deployment as sync_deployment

        out.append(sync_deployment(sync_config))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="the run config the deployments default to")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a default override: section.field=value")  # fmt: skip
    parser.add_argument("--rebuild-cron", default=REBUILD_CRON,
                        help="cron of the dataset rebuild; '' for none")  # fmt: skip
    parser.add_argument("--sync-config", type=Path, help="also serve sync-metadata/daily")
    parser.add_argument("--limit", type=int, default=4, help="flow runs at once")
    args = parser.parse_args(argv)
    serve(*deployments(args.config, args.overrides, args.rebuild_cron or None, args.sync_config),
          limit=args.limit)  # fmt: skip


if __name__ == "__main__":
    main()
