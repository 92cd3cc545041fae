"""Bad input: an unreachable host, a wrong API key (401), malformed JSON, unset credentials,
no store. Each gives a clear error and the previous snapshot stays the latest."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from kohaku.errors import ConfigError, InputError
from kohaku.metadata import snapshot
from kohaku.metadata.config import SyncConfig
from kohaku.metadata.sync import SyncError, sync_metadata
from tests.metadata.conftest import sync_config
from tests.metadata.fake_danbooru import FakeDanbooru

CREDENTIALS = {"login_env": "KOHAKU_TEST_LOGIN", "api_key_env": "KOHAKU_TEST_API_KEY"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host(store: Path) -> None:
    base = snapshot.latest_id(store)
    cfg = sync_config(store, f"http://127.0.0.1:{free_port()}", retries=1)
    with pytest.raises(SyncError, match=r"cannot fetch .*/posts\.json: connection error"):
        sync_metadata(cfg)
    assert snapshot.latest_id(store) == base


def test_wrong_api_key_is_refused_and_never_shown(
    store: Path, corpus: list[dict], monkeypatch, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    base = snapshot.latest_id(store)
    monkeypatch.setenv("KOHAKU_TEST_LOGIN", "kohaku-bot")
    monkeypatch.setenv("KOHAKU_TEST_API_KEY", "wrong-secret-123")
    with FakeDanbooru(corpus, credentials=("kohaku-bot", "right-secret-456")) as api:
        cfg = sync_config(store, api.url, **CREDENTIALS)
        with pytest.raises(SyncError, match=r"HTTP 401.*\$KOHAKU_TEST_API_KEY") as err:
            sync_metadata(cfg)
        assert snapshot.latest_id(store) == base and len(api.requests) == 1  # 401: no retry
        monkeypatch.setenv("KOHAKU_TEST_API_KEY", "right-secret-456")
        result = sync_metadata(cfg)
    assert snapshot.latest_id(store) == result.snapshot != base
    written = (store / "snapshots" / f"{result.snapshot}.json").read_text()
    for text in (str(err.value), caplog.text, written, result.model_dump_json()):
        assert "secret" not in text


def test_credentials_named_but_not_set(store: Path, monkeypatch) -> None:
    monkeypatch.delenv("KOHAKU_TEST_API_KEY", raising=False)
    monkeypatch.setenv("KOHAKU_TEST_LOGIN", "kohaku-bot")
    with pytest.raises(ConfigError, match="KOHAKU_TEST_API_KEY: set both"):
        sync_metadata(sync_config(store, "http://127.0.0.1:9", **CREDENTIALS))


def test_malformed_json_then_recovery(store: Path, corpus: list[dict]) -> None:
    base = snapshot.latest_id(store)
    with FakeDanbooru(corpus) as api:
        api.malformed = True
        with pytest.raises(SyncError, match="malformed JSON"):
            sync_metadata(sync_config(store, api.url))
        assert snapshot.latest_id(store) == base
        api.malformed = False
        assert sync_metadata(sync_config(store, api.url)).parent == base


def test_host_not_allowed_and_no_store(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not in sync.fetch.allowed_hosts"):
        sync_metadata(SyncConfig(store=store, api_url="http://127.0.0.1:9"))
    with pytest.raises(InputError, match="not a metadata store|no snapshot yet"):
        sync_metadata(sync_config(tmp_path / "nothing", "http://127.0.0.1:9"))


def test_a_field_of_the_wrong_type_is_named(store: Path, corpus: list[dict]) -> None:
    base = snapshot.latest_id(store)
    odd = [{**p, "image_width": "wide"} if p["id"] > 2000 else p for p in corpus]
    with FakeDanbooru(odd) as api, pytest.raises(ConfigError, match="cannot be read .*remove"):
        sync_metadata(sync_config(store, api.url))
    assert snapshot.latest_id(store) == base
