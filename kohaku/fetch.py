"""Polite, bounded HTTP fetching of single files (the network edge of the download stage).

Reads: URLs (and, optionally, API credentials from environment variables named in the
config). Writes nothing: `Fetcher.fetch` returns a `FetchResult` whose failures are
data (status and error, a stable text without per-request detail), never exceptions.
Policy: an allowed-host list (redirects off it are refused), per-host concurrency and rate
limits, connect/read timeouts, a maximum body size, retries with exponential backoff and
jitter, and `Retry-After` honoured on 429/503. With credentials the User-Agent names the
account (danbooru asks API clients to); the API key goes only into the Authorization
header and never appears in results, errors, logs or `Fetcher.policy`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class FetchConfig(BaseModel):
    """How files are fetched over HTTP(S)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    allowed_hosts: list[str] = Field(
        ["cdn.donmai.us", "danbooru.donmai.us"], min_length=1,
        description="hosts that may be contacted, redirects included",
    )  # fmt: skip
    connect_timeout: float = Field(10.0, gt=0, description="seconds to connect")
    read_timeout: float = Field(30.0, gt=0, description="seconds between bytes")
    max_bytes: int = Field(64 << 20, ge=1, description="larger bodies are refused")
    retries: int = Field(4, ge=0, description="retries after the first attempt")
    backoff_base: float = Field(0.5, ge=0, description="first retry delay, doubled each time")
    backoff_max: float = Field(60.0, ge=0, description="longest delay between attempts")
    per_host_concurrency: int = Field(4, ge=1, description="requests in flight per host")
    per_host_rate: float = Field(10.0, gt=0, description="requests started per second per host")
    max_redirects: int = Field(3, ge=0, description="redirects followed")
    user_agent: str = Field("kohaku/0.1 (dataset builder)", description="User-Agent header")
    login_env: str | None = Field(None, description="env var holding the API login")
    api_key_env: str | None = Field(None, description="env var holding the API key")


def fetch_policy(default: FetchConfig) -> Any:
    """The type of a config section's `fetch` field whose defaults are `default`: a table
    (a dict, as TOML and `key=value` overrides give) overrides only the fields it names and
    the others keep `default`'s values, not FetchConfig's generic ones (a sync with just
    `[fetch] api_key_env = ...` stays at its own 2 requests/s); a FetchConfig is taken whole."""
    return Annotated[FetchConfig, BeforeValidator(partial(_over, default))]


def _over(default: FetchConfig, value: Any) -> Any:
    return {**default.model_dump(), **value} if isinstance(value, dict) else value


class FetchPolicy(BaseModel):
    """What a fetcher sends and how often, as it will be sent: no secret, so it can be
    printed and recorded (the sync logs it and writes it to its journal)."""

    model_config = ConfigDict(frozen=True)
    user_agent: str = Field(description="the User-Agent header, the account's login included")
    per_host_rate: float = Field(description="requests started per second per host")
    per_host_concurrency: int = Field(description="requests in flight per host")
    allowed_hosts: list[str] = Field(description="hosts that may be contacted")
    account: str | None = Field(description="the login sent with the API key; None: anonymous")

    def describe(self) -> str:
        who = f"as {self.account}" if self.account else "anonymous"
        return (f"{self.per_host_rate:g} requests/s and {self.per_host_concurrency} at a time "
                f"per host, {who}, User-Agent {self.user_agent!r}, hosts "
                f"{', '.join(self.allowed_hosts)}")  # fmt: skip


def account_user_agent(user_agent: str, login: str | None) -> str:
    """`user_agent` naming the account: `kohaku/0.1 (dataset builder; user <login>)`.
    danbooru's staff ask API clients that log in to say who they are in the User-Agent, so
    an abusive client can be contacted rather than its IP range banned (gallery-dl issue
    9705). The login is percent-encoded: a header carries ASCII only. Never the key."""
    if not login:
        return user_agent
    who = f"user {quote(login, safe='')}"
    if user_agent.endswith(")"):
        return f"{user_agent[:-1]}; {who})"
    return f"{user_agent} ({who})"


@dataclass(frozen=True)
class FetchResult:
    url: str
    ok: bool
    data: bytes | None
    error: str | None
    http_status: int | None
    attempts: int


class _Permanent(Exception):
    """A failure that retrying will not fix."""


class _Retryable(Exception):
    def __init__(self, message: str, wait: float | None = None, status: int | None = None):
        super().__init__(message)
        self.wait, self.status = wait, status


class _HostGate:
    """Per-host concurrency (semaphore) and rate (minimum spacing between starts)."""

    def __init__(self, concurrency: int, rate: float):
        self.slots = threading.Semaphore(concurrency)
        self.spacing, self.next_start = 1.0 / rate, 0.0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        self.slots.acquire()
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.spacing
        time.sleep(max(0.0, start - now))
        with self.lock:  # woken late: the next start moves back too, so starts stay spaced
            self.next_start = max(self.next_start, time.monotonic() + self.spacing)

    def __exit__(self, *exc: object) -> None:
        self.slots.release()


class Fetcher:
    """Thread-safe fetcher; one per shard (or per process), closed when done."""

    def __init__(self, cfg: FetchConfig):
        self.cfg = cfg
        self.gates: dict[str, _HostGate] = {}
        self.gates_lock = threading.Lock()
        self.auth = _credentials(cfg)
        login = self.auth[0] if self.auth else None
        self.policy = FetchPolicy(
            user_agent=account_user_agent(cfg.user_agent, login), account=login,
            per_host_rate=cfg.per_host_rate, per_host_concurrency=cfg.per_host_concurrency,
            allowed_hosts=list(cfg.allowed_hosts),
        )  # fmt: skip
        timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout)
        self.client = httpx.Client(timeout=timeout, follow_redirects=False,
                                   headers={"User-Agent": self.policy.user_agent})  # fmt: skip

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self, url: str) -> FetchResult:
        """GET `url` with retries; failures are returned, not raised."""
        attempt, status = 0, None
        while True:
            attempt += 1
            try:
                data, status = self._follow(url)
                return FetchResult(url, True, data, None, status, attempt)
            except _Permanent as exc:
                return FetchResult(url, False, None, str(exc), status, attempt)
            except _Retryable as exc:
                status = exc.status
                if attempt > self.cfg.retries:
                    return FetchResult(url, False, None, f"{exc} (after {attempt} attempts)",
                                       status, attempt)  # fmt: skip
                time.sleep(self._delay(attempt, exc.wait))

    def _delay(self, attempt: int, wait: float | None) -> float:
        if wait is not None:
            return min(wait, self.cfg.backoff_max)
        backoff = self.cfg.backoff_base * 2 ** (attempt - 1)
        return min(self.cfg.backoff_max, backoff * random.uniform(0.5, 1.0))

    def _follow(self, url: str) -> tuple[bytes, int]:
        for _ in range(self.cfg.max_redirects + 1):
            host = self._check_host(url)
            with self._gate(host):
                outcome = self._get(url)
            if isinstance(outcome, str):  # a redirect target
                url = outcome
                continue
            return outcome
        raise _Permanent(f"more than {self.cfg.max_redirects} redirects")

    def _check_host(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise _Permanent(f"unsupported URL scheme {parts.scheme!r}")
        host = parts.hostname or ""
        if host not in self.cfg.allowed_hosts:
            raise _Permanent(f"host {host!r} is not in fetch.allowed_hosts")
        return host

    def _gate(self, host: str) -> _HostGate:
        with self.gates_lock:
            if host not in self.gates:
                self.gates[host] = _HostGate(self.cfg.per_host_concurrency, self.cfg.per_host_rate)
            return self.gates[host]

    def _get(self, url: str) -> tuple[bytes, int] | str:
        try:
            with self.client.stream("GET", url, auth=self.auth) as resp:
                if resp.is_redirect:
                    return urljoin(url, resp.headers.get("location", ""))
                _raise_for_status(resp)
                return _read_body(resp, self.cfg.max_bytes), resp.status_code
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout ({type(exc).__name__})") from None
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            raise _Retryable(f"connection error ({type(exc).__name__})") from None


def _raise_for_status(resp: httpx.Response) -> None:
    code = resp.status_code
    if code < 300:
        return
    if code in RETRY_STATUS:
        raise _Retryable(f"HTTP {code}", _retry_after(resp.headers.get("retry-after")), code)
    raise _Permanent(f"HTTP {code}")


def _read_body(resp: httpx.Response, max_bytes: int) -> bytes:
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _Permanent(f"body exceeds fetch.max_bytes ({max_bytes})")
    chunks, size = [], 0
    for chunk in resp.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise _Permanent(f"body exceeds fetch.max_bytes ({max_bytes})")
        chunks.append(chunk)
    data = b"".join(chunks)
    if declared and declared.isdigit() and len(data) != int(declared):
        # no byte counts in the reason: they differ per file, and reasons are grouped
        raise _Retryable("truncated body (shorter than its Content-Length)")
    return data


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _credentials(cfg: FetchConfig) -> tuple[str, str] | None:
    if not (cfg.login_env and cfg.api_key_env):
        return None
    login, key = os.environ.get(cfg.login_env), os.environ.get(cfg.api_key_env)
    if not (login and key):
        names = f"{cfg.login_env} and {cfg.api_key_env}"
        raise ValueError(f"fetch.login_env / fetch.api_key_env name {names}: set both")
    return (login, key)
