"""Images for the bundled demo: a picture per post, made from its id, and a local HTTP
server that serves them in danbooru's original-file layout.

Reads: the demo's synthetic danbooru2023 SQLite database. Writes: `stamp_md5s` replaces
each post's md5 and file_url in that database with those of its generated picture (so the
download stage's md5 check passes, as with real danbooru files); `ImageServer` answers
`GET /original/<aa>/<bb>/<md5>.<ext>` on 127.0.0.1 with the same bytes, generated on
request. Pictures are small (long side `LONG_SIDE`) with the post's aspect ratio.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LONG_SIDE = 256
FORMATS = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "avif": "AVIF",
}
URL_TEMPLATE = "http://127.0.0.1:{port}/original/{{md5_a}}/{{md5_b}}/{{md5}}.{{ext}}"


def picture(post_id: int, width: int, height: int, ext: str) -> bytes:
    """A deterministic picture for a post: a gradient and a few shapes, in its format."""
    rng = np.random.default_rng(post_id)
    scale = LONG_SIDE / max(width, height)
    w, h = max(16, round(width * scale)), max(16, round(height * scale))
    base = rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, w)[None, :, None] * np.linspace(1, 0.3, h)[:, None, None]
    pixels = (base * ramp + (255 - base) * (1 - ramp)).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(4, max(5, min(w, h) // 3)))
        draw.ellipse(
            (x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3))
        )
    buf = io.BytesIO()
    lossy = ext in ("jpg", "jpeg", "webp", "avif")
    img.save(buf, FORMATS[ext], **({"quality": 90} if lossy else {}))
    return buf.getvalue()


def _image_posts(db: Path) -> list[tuple[int, int, int, str, str]]:
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT id, image_width, image_height, file_ext, md5 FROM post WHERE md5 IS NOT NULL"
        ).fetchall()
    return [r for r in rows if r[3] in FORMATS]


def stamp_md5s(db: Path) -> int:
    """Give every image post the md5 of its generated picture; returns how many."""
    updates = []
    for post_id, w, h, ext, _old in _image_posts(db):
        md5 = hashlib.md5(picture(post_id, w, h, ext)).hexdigest()
        url = f"https://cdn.donmai.us/original/{md5[:2]}/{md5[2:4]}/{md5}.{ext}"
        updates.append((md5, url, post_id))
    with sqlite3.connect(db) as con:
        con.executemany("UPDATE post SET md5 = ?, file_url = ? WHERE id = ?", updates)
    return len(updates)


class ImageServer:
    """Serves the demo pictures on 127.0.0.1 (a free port) while in a `with` block."""

    def __init__(self, db: Path):
        self.posts = {md5: (i, w, h, ext) for i, w, h, ext, md5 in _image_posts(db)}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.posts))
        self.port = self.httpd.server_address[1]
        self.url_template = URL_TEMPLATE.format(port=self.port)
        # shutdown() waits for serve_forever's next poll: 0.5 s by default, at every exit
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(posts: dict[str, tuple[int, int, int, str]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            name = self.path.rsplit("/", 1)[-1]
            post = posts.get(name.split(".", 1)[0])
            if post is None or not self.path.startswith("/original/"):
                body, code = b"not found", 404
            else:
                body, code = picture(*post), 200
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
