"""A small static file server for the download benchmarks (stdlib only).

    python bench/image_server.py --dir bench/out/dl-images    # prints the port, serves

`http.server.ThreadingHTTPServer` on 127.0.0.1 (port 0 = any free one, printed as the
first line of stdout), HTTP/1.1 with keep-alive, no request log, bodies sent with
`socket.sendfile` so that the server costs little CPU. Run it in its own process, so that
it does not hold the GIL of the client it serves. Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 makes bursts of connects wait for SYN retries


class QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        outputfile.flush()
        self.connection.sendfile(source)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, help="folder to serve")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    handler = functools.partial(QuietHandler, directory=args.dir)
    server = Server(("127.0.0.1", args.port), handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
