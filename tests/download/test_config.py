"""The download section of a run config: `[download.fetch]` overrides the download's own
HTTP defaults field by field, as `[fetch]` does for the sync (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohaku.config import load_config
from kohaku.download.config import DOWNLOAD_FETCH, DownloadConfig
from kohaku.fetch import FetchConfig

TABLES = {
    "hosts only": 'allowed_hosts = ["cdn.donmai.us"]',
    "credentials only": 'login_env = "DANBOORU_LOGIN"\napi_key_env = "DANBOORU_API_KEY"',
}
GIVEN = {"hosts only": {"allowed_hosts"}, "credentials only": {"login_env", "api_key_env"}}


def write(tmp_path: Path, fetch: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(
        f'[sample]\nsource = "db"\n[download]\nthreads = 2\n[download.fetch]\n{fetch}\n'
    )
    return path


@pytest.mark.parametrize("table", sorted(TABLES))
@pytest.mark.parametrize("field", sorted(FetchConfig.model_fields))
def test_each_default_survives_a_partial_download_fetch_table(tmp_path, table, field):
    fetch = load_config(write(tmp_path, TABLES[table])).download.fetch
    if field in GIVEN[table]:
        assert getattr(fetch, field) != getattr(DOWNLOAD_FETCH, field)
    else:
        assert getattr(fetch, field) == getattr(DOWNLOAD_FETCH, field)


def test_a_whole_fetch_config_is_taken_as_given() -> None:
    # a FetchConfig object (not a table) is complete: nothing is filled in
    mine = FetchConfig(allowed_hosts=["127.0.0.1"], per_host_rate=3.0)
    assert DownloadConfig(fetch=mine).fetch == mine
    again = DownloadConfig.model_validate(DownloadConfig(fetch=mine).model_dump(mode="json"))
    assert again.fetch == mine  # a dumped config (Prefect parameters) round-trips
