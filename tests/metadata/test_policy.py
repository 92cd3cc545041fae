"""What a sync sends, said before it sends it: the effective HTTP policy (rate, concurrency,
User-Agent, hosts) is logged at the start and written to the journal; with credentials the
User-Agent names the account, and the API key appears only in the Authorization header
(issue 15)."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from kohaku.metadata import snapshot
from kohaku.metadata.config import API_FETCH, load_sync_config
from kohaku.metadata.sync import SyncError, sync_metadata
from tests.metadata.conftest import OLD_MAX
from tests.metadata.fake_danbooru import FakeDanbooru

LOGIN, KEY, WRONG = "kohaku-bot", "right-secret-456", "wrong-secret-123"


def toml_config(store: Path, url: str, tmp_path: Path, fetch: str = ""):
    """The config as a user writes it: a `[fetch]` table naming only what it changes."""
    path = tmp_path / "sync.toml"
    path.write_text(f'store = {json.dumps(str(store))}\napi_url = "{url}"\npage_limit = 100\n'
                    f'recent_window = 300\n[fetch]\nallowed_hosts = ["127.0.0.1"]\n'
                    f"per_host_rate = 200.0\nbackoff_base = 0.01\n{fetch}")  # fmt: skip
    return load_sync_config(path)


def journal_text(store: Path) -> str:
    journal = store / f".sync-{snapshot.latest_id(store)}"
    return "".join(p.read_text() for p in sorted(journal.rglob("*")) if p.is_file())


def test_the_policy_is_logged_and_journaled_before_the_first_request(
    store: Path, corpus: list[dict], tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="kohaku")
    with FakeDanbooru(corpus) as api:
        api.malformed = True  # the sync stops after one request: its journal stays
        with pytest.raises(SyncError, match="malformed JSON"):
            sync_metadata(toml_config(store, api.url, tmp_path))
    line = next(r.getMessage() for r in caplog.records if "requests/s" in r.getMessage())
    assert "200 requests/s and 1 at a time per host, anonymous" in line
    assert API_FETCH.user_agent in line and "127.0.0.1" in line
    journal = store / f".sync-{snapshot.latest_id(store)}"
    (record,) = [json.loads(x) for x in (journal / "policy.jsonl").read_text().splitlines()]
    assert record["per_host_rate"] == 200.0 and record["per_host_concurrency"] == 1
    assert record["user_agent"] == API_FETCH.user_agent == api.requests[0].user_agent
    assert record["allowed_hosts"] == ["127.0.0.1"] and record["account"] is None


def test_credentials_name_the_account_and_the_key_stays_in_the_auth_header(
    store: Path, corpus: list[dict], tmp_path: Path, monkeypatch, caplog, capsys
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KOHAKU_TEST_LOGIN", LOGIN)
    monkeypatch.setenv("KOHAKU_TEST_API_KEY", WRONG)
    names = 'login_env = "KOHAKU_TEST_LOGIN"\napi_key_env = "KOHAKU_TEST_API_KEY"\n'
    few = [p for p in corpus if p["id"] <= OLD_MAX + 150]
    with FakeDanbooru(few, credentials=(LOGIN, KEY)) as api:
        cfg = toml_config(store, api.url, tmp_path, names)
        assert (cfg.fetch.per_host_concurrency, cfg.fetch.user_agent) == (1, API_FETCH.user_agent)
        with pytest.raises(SyncError, match="HTTP 401"):
            sync_metadata(cfg)  # a refused key: the journal stays, to be read below
        journaled = journal_text(store)
        monkeypatch.setenv("KOHAKU_TEST_API_KEY", KEY)
        result = sync_metadata(cfg)
    agent = "kohaku/0.1 (danbooru metadata sync; one request at a time; user kohaku-bot)"
    assert {r.user_agent for r in api.requests} == {agent} and result.policy["user_agent"] == agent
    assert result.policy["account"] == LOGIN and f'"account": "{LOGIN}"' in journaled
    for key in (KEY, WRONG):
        encoded = base64.b64encode(f"{LOGIN}:{key}".encode()).decode()
        for request in api.requests:
            others = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
            assert not [v for v in others.values() if key in v or encoded in v]
        seen = (caplog.text, journaled, result.model_dump_json(), capsys.readouterr().err)
        assert not [text for text in seen if key in text or encoded in text]
    assert any(r.headers.get("Authorization", "").startswith("Basic ") for r in api.requests)
