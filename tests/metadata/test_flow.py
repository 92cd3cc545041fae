"""The `sync-metadata` flow against a real local Prefect API: a sync, its artifact, and the
rebuild deployment started after a changed snapshot (not after an unchanged one)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from kohaku.metadata import snapshot
from tests.metadata.conftest import sync_config
from tests.metadata.fake_danbooru import FakeDanbooru


@flow(name="rebuild-probe")
def rebuild_probe() -> None:
    """Stands in for the dataset rebuild; only its flow runs are looked at."""


def deployment_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        dep = DeploymentFilter(name=DeploymentFilterName(any_=[name]))
        return client.read_flow_runs(deployment_filter=dep)


def test_sync_flow_triggers_the_rebuild(prefect_api, store: Path, corpus: list[dict]) -> None:
    from flows.sync_metadata import deployment, sync_metadata_flow

    rebuild_probe.to_deployment(name="after-sync").apply()
    base = snapshot.latest_id(store)
    with FakeDanbooru(corpus) as api:
        cfg = sync_config(store, api.url)
        state = sync_metadata_flow(cfg, rebuild_deployment="rebuild-probe/after-sync",
                                   return_state=True)  # fmt: skip
        assert state.is_completed()
        out = state.result()
        assert out["parent"] == base and out["snapshot"] == snapshot.latest_id(store) != base
        runs = deployment_runs("after-sync")
        assert [str(r.id) for r in runs] == [out["rebuild_run"]]

        again = sync_metadata_flow(cfg, rebuild_deployment="rebuild-probe/after-sync")
    assert again["snapshot"] == out["snapshot"] and again["rebuild_run"] is None
    assert len(deployment_runs("after-sync")) == 1

    dep = deployment(store / "sync.toml")
    assert dep.name == "daily" and dep.schedules[0].schedule.cron == "0 3 * * *"
    assert dep.parameters["rebuild_deployment"] == "build-dataset/kohaku"


def test_refused_key_fails_the_flow_without_retries(
    prefect_api, store: Path, corpus: list[dict], monkeypatch
) -> None:
    from flows.sync_metadata import sync_metadata_flow

    monkeypatch.setenv("KOHAKU_TEST_LOGIN", "bot")
    monkeypatch.setenv("KOHAKU_TEST_API_KEY", "wrong")
    base = snapshot.latest_id(store)
    with FakeDanbooru(corpus, credentials=("bot", "right")) as api:
        cfg = sync_config(store, api.url, login_env="KOHAKU_TEST_LOGIN",
                          api_key_env="KOHAKU_TEST_API_KEY")  # fmt: skip
        state = sync_metadata_flow(cfg, return_state=True)
    assert state.is_failed() and "HTTP 401" in str(state.result(raise_on_failure=False))
    assert len(api.requests) == 1  # a refused key is not retried (a network error would be)
    assert snapshot.latest_id(store) == base
