"""Tasks of the metadata sync: one sync of the store, and the trigger of a dataset rebuild."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from kohaku.metadata.config import SyncConfig
from kohaku.metadata.sync import SyncError, SyncResult, sync_metadata


def _retryable(task, task_run, state) -> bool:
    """Retry network and server failures (the retry resumes from the journal), not a
    refused login, a malformed page or a config error."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, SyncError) and exc.retryable


@task(name="sync-metadata", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=300,
      retry_condition_fn=_retryable, tags=["network", "metadata"])  # fmt: skip
def sync_task(cfg: SyncConfig) -> SyncResult:
    return sync_metadata(cfg)


@task(name="trigger-rebuild", cache_policy=NO_CACHE, tags=["metadata"])
def trigger_rebuild_task(deployment: str) -> str:
    """Start a run of the dataset-rebuild deployment (`flow-name/deployment-name`) without
    waiting for it; its sample stage reads the store's latest snapshot."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, timeout=0, as_subflow=False, tags=["after-metadata-sync"])
    return str(run.id)
