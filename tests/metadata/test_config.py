"""The sync config from TOML: a `[fetch]` table overrides the sync's polite defaults field by
field (issue 15: one `api_key_env` line used to bring back FetchConfig's 10 requests/s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohaku.errors import ConfigError
from kohaku.fetch import FetchConfig
from kohaku.metadata.config import API_FETCH, load_sync_config

TABLES = {
    "hosts only": 'allowed_hosts = ["danbooru.donmai.us", "testbooru.donmai.us"]',
    "credentials only": 'login_env = "DANBOORU_LOGIN"\napi_key_env = "DANBOORU_API_KEY"',
    "login only": 'login_env = "DANBOORU_LOGIN"',
}
GIVEN = {"hosts only": {"allowed_hosts"}, "credentials only": {"login_env", "api_key_env"},
         "login only": {"login_env"}}  # fmt: skip


def write(tmp_path: Path, fetch: str | None) -> Path:
    path = tmp_path / "sync.toml"
    table = f"\n[fetch]\n{fetch}\n" if fetch is not None else ""
    path.write_text(f'store = "meta"\nrecent_window = 100{table}')
    return path


def test_the_sync_defaults_are_the_documented_polite_ones(tmp_path: Path) -> None:
    fetch = load_sync_config(write(tmp_path, None)).fetch
    assert (fetch.per_host_rate, fetch.per_host_concurrency) == (2.0, 1)
    assert fetch.user_agent.startswith("kohaku/") and "metadata sync" in fetch.user_agent
    assert fetch.user_agent != FetchConfig().user_agent and fetch == API_FETCH


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("field", sorted(FetchConfig.model_fields))
def test_each_default_survives_a_partial_fetch_table(tmp_path: Path, table: str, field: str):
    fetch = load_sync_config(write(tmp_path, TABLES[table])).fetch
    if field in GIVEN[table]:
        assert getattr(fetch, field) != getattr(API_FETCH, field)  # the table's value won
    else:
        assert getattr(fetch, field) == getattr(API_FETCH, field)


def test_overrides_also_change_one_field(tmp_path: Path) -> None:
    cfg = load_sync_config(write(tmp_path, TABLES["hosts only"]), ["fetch.per_host_rate=1.0"])
    assert cfg.fetch.per_host_rate == 1.0 and cfg.fetch.per_host_concurrency == 1
    assert cfg.fetch.allowed_hosts == ["danbooru.donmai.us", "testbooru.donmai.us"]
    assert cfg.fetch.user_agent == API_FETCH.user_agent


def test_a_misspelt_fetch_field_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invalid sync config: fetch\.per_host_rat: ") as err:
        load_sync_config(write(tmp_path, "per_host_rat = 5.0"))
    assert "\n" not in str(err.value)
