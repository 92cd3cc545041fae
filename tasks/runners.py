"""The Prefect task runner a run's config asks for: threads, or an existing Dask cluster."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from kohaku.config import RunnerConfig
from kohaku.errors import ConfigError


def task_runner(cfg: RunnerConfig) -> TaskRunner:
    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError("runner.kind = 'dask' needs prefect-dask: "
                          "pip install 'kohaku[dask]'") from None  # fmt: skip
    return DaskTaskRunner(address=cfg.address)
