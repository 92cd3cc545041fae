"""A fake danbooru API on 127.0.0.1: `/posts.json` in the real JSON format, from a corpus.

Pages like danbooru: `limit` (at most 200), `page=a<id>` (the `limit` posts just above id),
`page=b<id>` (just below), `page=<n>` (numbered, newest first), newest first within a page;
deleted posts only with `tags=status:any`. Misbehaviour on demand: a rate limit answered with
429 + Retry-After, a 500 every n-th request, 401 for a wrong login/API key, malformed JSON.
Every request is recorded (arrival time, query, status, ids served) to check the client.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    at: float
    query: dict
    status: int
    user_agent: str | None = None
    ids: list[int] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


class FakeDanbooru:
    def __init__(
        self, posts: list[dict], rate: float | None = None, retry_after: int = 1,
        fail_every: int = 0, credentials: tuple[str, str] | None = None, burst: float = 1.0,
    ):  # fmt: skip
        self.posts = {p["id"]: dict(p) for p in posts}
        self.rate, self.retry_after, self.fail_every = rate, retry_after, fail_every
        self.burst, self.tokens = burst, burst  # token bucket: `rate`/s, `burst` at most
        self.credentials, self.malformed = credentials, False
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.last_refill = 0.0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # shutdown() waits for serve_forever's next poll: 0.5 s by default, at every exit
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeDanbooru:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # danbooru moving on between syncs
    def delete(self, post_id: int) -> None:
        self.posts[post_id] = {**self.posts[post_id], "is_deleted": True}

    def expunge(self, post_id: int) -> None:
        del self.posts[post_id]

    def set_fav_count(self, post_id: int, n: int) -> None:
        self.posts[post_id] = {**self.posts[post_id], "fav_count": n}

    def add(self, posts: list[dict]) -> None:
        self.posts.update({p["id"]: dict(p) for p in posts})

    def served_ids(self) -> list[int]:
        return [i for r in self.requests if r.status == 200 for i in r.ids]

    def respond(self, path: str, headers) -> tuple[int, bytes, dict]:
        """Status, body and headers for one request (called under the lock)."""
        parts = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        record = Request(time.monotonic(), query, 200, headers.get("User-Agent"),
                         headers=dict(headers.items()))  # fmt: skip
        auth = headers.get("Authorization")
        self.requests.append(record)
        record.status, body, headers = self._answer(parts.path, query, auth, record)
        return record.status, body, headers

    def _answer(self, path: str, query: dict, auth: str | None, record: Request):
        if path != "/posts.json":
            return 404, b'{"success":false,"message":"not found"}', {}
        if self.credentials and auth != _basic(*self.credentials):
            return 401, b'{"success":false,"message":"SessionLoader::AuthenticationFailure"}', {}
        if self.rate and not self._take_token(record.at):
            return 429, b'{"success":false,"message":"rate limited"}', \
                {"Retry-After": str(self.retry_after)}  # fmt: skip
        if self.fail_every and len(self.requests) % self.fail_every == 0:
            return 500, b"<html>internal error</html>", {}
        if self.malformed:
            return 200, b'[{"id": 1, "created_at": ', {}
        page = self._page(query)
        record.ids = [p["id"] for p in page]
        return 200, json.dumps(page).encode(), {"Content-Type": "application/json"}

    def _take_token(self, now: float) -> bool:
        """Token bucket: refilled at `rate`/s up to `burst`; burst 1 = requests at least
        1 / rate apart."""
        self.tokens = min(self.burst, self.tokens + (now - self.last_refill) * self.rate)
        self.last_refill = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def _page(self, query: dict) -> list[dict]:
        limit = min(int(query.get("limit", 20)), 200)
        shown = sorted(i for i, p in self.posts.items()
                       if "status:any" in query.get("tags", "") or not p["is_deleted"])  # fmt: skip
        page = query.get("page", "1")
        if page.startswith("a"):
            ids = [i for i in shown if i > int(page[1:])][:limit]
        elif page.startswith("b"):
            ids = [i for i in shown if i < int(page[1:])][-limit:]
        else:
            start = len(shown) - (int(page) - 1) * limit
            ids = shown[max(0, start - limit) : max(0, start)]
        return [self.posts[i] for i in reversed(ids)]


def _basic(login: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{key}".encode()).decode()


def _handler(server: FakeDanbooru) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            with server.lock:
                status, body, headers = server.respond(self.path, self.headers)
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    return Handler
