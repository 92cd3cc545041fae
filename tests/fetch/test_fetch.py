"""Fetcher against a real local HTTP server with misbehaving routes."""

from __future__ import annotations

import time

import pytest

from kohaku.fetch import FetchConfig, Fetcher, account_user_agent
from tests.fetch.server import Server

FAST = dict(
    allowed_hosts=["127.0.0.1"], retries=3, backoff_base=0.01, backoff_max=2.0,
    connect_timeout=2.0, read_timeout=0.5, max_bytes=1000,
)  # fmt: skip


@pytest.fixture
def server():
    with Server({"/files/a.bin": b"A" * 100}) as srv:
        yield srv


def fetch(server: Server, path: str, **cfg) -> tuple:
    with Fetcher(FetchConfig(**{**FAST, **cfg})) as f:
        return f.fetch(server.url(path))


def test_ok(server):
    r = fetch(server, "/files/a.bin")
    assert (r.ok, r.data, r.http_status, r.attempts) == (True, b"A" * 100, 200, 1)


def test_500_is_retried_then_recorded(server):
    r = fetch(server, "/500")
    assert not r.ok and r.data is None and r.http_status == 500
    assert r.attempts == 4 and server.hits["/500"] == 4
    assert "HTTP 500" in r.error and "after 4 attempts" in r.error


def test_transient_503_recovers(server):
    r = fetch(server, "/flaky")
    assert r.ok and r.data == b"finally" and r.attempts == 3


def test_429_waits_for_retry_after(server):
    t0 = time.monotonic()
    r = fetch(server, "/429")
    assert r.ok and r.attempts == 2
    assert server.starts[1] - server.starts[0] >= 0.95  # Retry-After: 1
    assert time.monotonic() - t0 < 3


def test_slow_response_times_out(server):
    r = fetch(server, "/slow", retries=1)
    assert not r.ok and "timeout" in r.error and r.attempts == 2


def test_truncated_body_is_not_accepted(server):
    r = fetch(server, "/truncated", retries=1)
    assert not r.ok and r.data is None


def test_body_over_the_limit_is_refused_without_retry(server):
    r = fetch(server, "/big")
    assert not r.ok and "max_bytes" in r.error and r.attempts == 1


def test_redirect_off_the_allowed_hosts_is_refused(server):
    r = fetch(server, "/offhost")
    assert not r.ok and "evil.example" in r.error and "allowed_hosts" in r.error


def test_redirect_on_host_is_followed(server):
    r = fetch(server, "/onhost")
    assert r.ok and r.data == b"A" * 100


def test_client_errors_are_not_retried(server):
    r = fetch(server, "/403")
    assert not r.ok and r.error == "HTTP 403" and server.hits["/403"] == 1


def test_host_not_allowed_is_refused_before_any_request(server):
    r = fetch(server, "/files/a.bin", allowed_hosts=["cdn.donmai.us"])
    assert not r.ok and "not in fetch.allowed_hosts" in r.error and not server.hits


def test_rate_limit_spaces_request_starts(server):
    from concurrent.futures import ThreadPoolExecutor

    cfg = FetchConfig(**{**FAST, "per_host_rate": 10.0})
    with Fetcher(cfg) as f, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(f.fetch, [server.url("/files/a.bin")] * 6))
    assert all(r.ok for r in results)
    # starts are spaced 0.1 s apart by the client; arrivals jitter by a few ms
    assert server.starts[-1] - server.starts[0] >= 5 * 0.1 * 0.95
    gaps = [b - a for a, b in zip(server.starts, server.starts[1:], strict=False)]
    assert min(gaps) >= 0.05


def test_credentials_come_from_the_environment_and_stay_out_of_results(server, monkeypatch):
    monkeypatch.setenv("KOHAKU_TEST_LOGIN", "alice")
    monkeypatch.setenv("KOHAKU_TEST_KEY", "s3cret-key")
    cfg = dict(login_env="KOHAKU_TEST_LOGIN", api_key_env="KOHAKU_TEST_KEY")
    ok = fetch(server, "/files/a.bin", **cfg)
    failed = fetch(server, "/403", **cfg)
    assert ok.ok and server.auth_seen[0].startswith("Basic ")
    assert "s3cret" not in repr(ok) and "s3cret" not in repr(failed)


def test_missing_credentials_are_a_clear_error(monkeypatch):
    monkeypatch.delenv("KOHAKU_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="set both"):
        Fetcher(FetchConfig(**FAST, login_env="USER", api_key_env="KOHAKU_TEST_KEY"))


@pytest.mark.parametrize(
    ("agent", "login", "expected"),
    [
        ("kohaku/0.1 (dataset builder)", "alice", "kohaku/0.1 (dataset builder; user alice)"),
        ("kohaku/0.1", "alice", "kohaku/0.1 (user alice)"),
        ("kohaku/0.1 (dataset builder)", None, "kohaku/0.1 (dataset builder)"),
        ("kohaku/0.1 (x)", "名前 (a)\r\n",
         "kohaku/0.1 (x; user %E5%90%8D%E5%89%8D%20%28a%29%0D%0A)"),
    ],
)  # fmt: skip
def test_the_user_agent_names_the_account(agent, login, expected):
    assert account_user_agent(agent, login) == expected


def test_the_policy_names_the_account_never_the_key(monkeypatch):
    monkeypatch.setenv("KOHAKU_TEST_LOGIN", "alice")
    monkeypatch.setenv("KOHAKU_TEST_KEY", "s3cret-key")
    cfg = FetchConfig(**FAST, login_env="KOHAKU_TEST_LOGIN", api_key_env="KOHAKU_TEST_KEY")
    with Fetcher(cfg) as f:
        policy, headers = f.policy, dict(f.client.headers)
    assert policy.user_agent == "kohaku/0.1 (dataset builder; user alice)" == headers["user-agent"]
    assert policy.account == "alice" and "s3cret" not in policy.describe()
    assert "s3cret" not in policy.model_dump_json() and "s3cret" not in str(headers)
