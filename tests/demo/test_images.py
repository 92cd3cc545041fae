"""The demo's picture server: the md5s stamped into the metadata match the served bytes,
so the demo downloads with md5 checks on."""

from __future__ import annotations

import hashlib
import io
import sqlite3

import httpx
from PIL import Image

from kohaku.demo.images import LONG_SIDE, ImageServer, picture, stamp_md5s
from kohaku.demo.synth import generate_danbooru_db


def test_served_pictures_match_the_stamped_md5s(tmp_path):
    db = tmp_path / "danbooru.db"
    generate_danbooru_db(db, 60, seed=3)
    stamped = stamp_md5s(db)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT id, md5, file_ext, image_width, image_height, file_url "
                           "FROM post WHERE md5 IS NOT NULL").fetchall()  # fmt: skip
    images = [r for r in rows if r[2] in ("jpg", "png", "gif", "webp", "avif")]
    assert stamped == len(images) > 30
    with ImageServer(db) as server, httpx.Client() as client:
        for _id, md5, ext, w, h, file_url in images[:10]:
            url = server.url_template.format(md5_a=md5[:2], md5_b=md5[2:4], md5=md5, ext=ext)
            body = client.get(url).content
            assert hashlib.md5(body).hexdigest() == md5
            assert file_url.endswith(f"/{md5[:2]}/{md5[2:4]}/{md5}.{ext}")
            img = Image.open(io.BytesIO(body))
            assert max(img.size) == LONG_SIDE
            assert abs(img.width / img.height - w / h) < 0.1 * max(1, w / h)
        missing = server.url_template.format(md5_a="00", md5_b="00", md5="0" * 32, ext="png")
        assert client.get(missing).status_code == 404
    assert picture(5, 300, 200, "png") == picture(5, 300, 200, "png")
