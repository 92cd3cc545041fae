"""A real HTTP server on 127.0.0.1 for fetch tests, with routes that misbehave."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """Serves `files` (path -> bytes) and the misbehaving routes below; counts hits."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.hits = files, Counter()
        self.auth_seen: list[str | None] = []
        self.starts: list[float] = []
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        # shutdown() waits for serve_forever's next poll: 0.5 s by default, at every exit
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)  # fmt: skip

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path
            server.hits[path] += 1
            server.starts.append(time.monotonic())
            server.auth_seen.append(self.headers.get("Authorization"))
            route = ROUTES.get(path.split("?")[0])
            if route is not None:
                return route(self, server.hits[path])
            if path in server.files:
                return self._send(200, server.files[path])
            return self._send(404, b"not found")

        def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(code)
            for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    def always_500(h, n):
        h._send(500, b"boom")

    def flaky(h, n):  # fails twice, then serves
        h._send(503, b"busy") if n <= 2 else h._send(200, b"finally")

    def rate_limited(h, n):  # 429 with Retry-After: 1 once, then serves
        h._send(429, b"slow down", {"Retry-After": "1"}) if n == 1 else h._send(200, b"ok")

    def slow(h, n):
        time.sleep(1.5)
        h._send(200, b"late")

    def truncated(h, n):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"x" * 10)
        h.wfile.flush()
        h.close_connection = True

    def big(h, n):
        h._send(200, b"y" * 5000)

    def offhost(h, n):
        h._send(302, b"", {"Location": "http://evil.example/file.png"})

    def onhost(h, n):
        h._send(302, b"", {"Location": "/files/a.bin"})

    def forbidden(h, n):
        h._send(403, b"no")

    ROUTES = {
        "/500": always_500, "/flaky": flaky, "/429": rate_limited, "/slow": slow,
        "/truncated": truncated, "/big": big, "/offhost": offhost, "/onhost": onhost,
        "/403": forbidden,
    }  # fmt: skip
    return Handler
