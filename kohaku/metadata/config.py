"""Config of the metadata sync (`SyncConfig`), loaded from a small TOML file.

Reads: a sync TOML (`store = "..."`, `api_url`, `recent_window`, a `[fetch]` table whose
fields override the sync's own polite defaults one by one) and `key=value` overrides.
Writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kohaku.config import deep_merge, parse_override, read_toml
from kohaku.errors import ConfigError
from kohaku.fetch import FetchConfig, fetch_policy

# the sync's own defaults, which a `[fetch]` table overrides field by field (README)
API_FETCH = FetchConfig(
    allowed_hosts=["danbooru.donmai.us"], per_host_concurrency=1, per_host_rate=2.0,
    max_bytes=32 << 20, user_agent="kohaku/0.1 (danbooru metadata sync; one request at a time)",
)  # fmt: skip
SyncFetch = fetch_policy(API_FETCH)


class SyncConfig(BaseModel):
    """Where the store is and how politely to read the danbooru API."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    store: Path = Field(description="metadata store folder (`kohaku metadata import`)")
    api_url: str = Field("https://danbooru.donmai.us", description="danbooru base URL")
    page_limit: int = Field(200, ge=1, le=200, description="posts per page (the API's max: 200)")
    recent_window: int = Field(
        50_000, ge=0,
        description="ids below the highest known one re-fetched each sync, to pick up "
        "fav_count, tag and deletion changes of recent posts",
    )  # fmt: skip
    tags: str = Field(
        "status:any", description="the `tags` query; status:any also lists deleted posts"
    )
    absent_as_deleted: bool = Field(
        True, description="a known post inside the re-fetched window that the API no longer "
        "lists is marked is_deleted (expunged posts)",
    )  # fmt: skip
    fetch: SyncFetch = Field(
        API_FETCH, description="HTTP policy: allowed hosts, rate, retries, User-Agent, "
        "login_env / api_key_env (names of environment variables, never the secrets); "
        "fields not given keep the sync's defaults (2 requests/s, one at a time)",
    )  # fmt: skip
    threads: int | None = Field(None, ge=1, description="DuckDB threads; empty = all cores")
    memory_limit: str | None = Field(None, description="DuckDB memory limit, e.g. 4GB")


def load_sync_config(path: Path | None = None, overrides: list[str] = ()) -> SyncConfig:
    """The file (a relative `store` is taken relative to it), then `key=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path, "sync config")
        if isinstance(data.get("store"), str):
            data["store"] = str(path.resolve().parent / Path(data["store"]).expanduser())
    for item in overrides:
        data = deep_merge(data, parse_override(item))
    try:
        return SyncConfig.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid sync config: {where}") from None
