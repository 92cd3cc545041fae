"""Failure reasons are stable texts (issue 15): two posts that fail the same way get the same
reason, with no object address, path or per-file number in it, so the UI's "most common
errors" table groups them. Every misbehaving route of the test server is covered, through
both decoders."""

from __future__ import annotations

import io
import re
from collections import defaultdict

import polars as pl
import pytest
from PIL import Image

from kohaku.download.config import DownloadConfig
from kohaku.download.run import ledger_counts
from kohaku.download.shard import download_shard
from kohaku.fetch import FetchConfig
from tests.download.test_shard import jpeg, md5, png
from tests.fetch.server import Server

ADDRESS = re.compile(r"0x[0-9a-f]{6,}")
J1, J2, P1, P2 = jpeg(320, 200), jpeg(200, 320), png(300, 210), png(210, 300)


def big(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "PNG")
    return buf.getvalue()


# kind -> two different bodies (or routes) that must fail with one reason
BODIES = {
    "html page": (b"<html><body>Just a moment...</body></html>",
                  b"<!DOCTYPE html>\n<html><title>403 Forbidden</title></html>"),
    "json": (b'{"success":false,"message":"not found"}', b'[{"error": 1}]'),
    "empty": (b"", b""),
    "garbage": (bytes(range(256)) * 3, b"\x00\x01\x02 plain bytes of nothing"),
    "truncated jpeg": (J1[:-100], J2[:-200]),  # cut in the pixel data
    "jpeg header only": (J1[:20], J2[:24]),
    "truncated png": (P1[: len(P1) // 2], P2[: len(P2) // 3]),
    "broken png header": (P1[:16] + b"\xff" * 8 + P1[24:], P2[:16] + b"\x00" * 8 + P2[24:]),
    "over the pixel limit": (big(700), big(800)),
}  # fmt: skip
ROUTES = {
    "HTTP 500": ("/500", "/500?again"), "HTTP 403": ("/403", "/403?again"),
    "HTTP 404": ("/missing/a.png", "/missing/b.png"), "slow": ("/slow", "/slow?again"),
    "truncated body": ("/truncated", "/truncated?again"), "too big": ("/big", "/big?again"),
    "off-host redirect": ("/offhost", "/offhost?again"),
}  # fmt: skip


def posts(server: Server) -> tuple[pl.DataFrame, dict[int, str]]:
    rows, kinds = [], {}
    for kind, bodies in BODIES.items():
        for body in bodies:
            path = f"/body/{len(rows)}.bin"
            server.files[path] = body
            rows.append((len(rows) + 1, md5(body), "png", server.url(path)))
            kinds[len(rows)] = kind
    for kind, paths in ROUTES.items():
        for path in paths:
            rows.append((len(rows) + 1, md5(b"x"), "png", server.url(path)))
            kinds[len(rows)] = kind
    for body in (J1, J2):  # served whole, but not the file the metadata lists
        server.files[f"/md5/{len(rows)}.jpg"] = body
        rows.append((len(rows) + 1, "0" * 32, "jpg", server.url(f"/md5/{len(rows)}.jpg")))
        kinds[len(rows)] = "md5 mismatch"
    frame = pl.DataFrame(rows, schema=["id", "md5", "file_ext", "file_url"], orient="row")
    return frame, kinds


@pytest.mark.parametrize("library", ["pyvips", "pillow"])
def test_the_same_failure_gives_the_same_stable_reason(tmp_path, library):
    cfg = DownloadConfig(
        fetch=FetchConfig(allowed_hosts=["127.0.0.1"], retries=0, read_timeout=0.3,
                          per_host_rate=1000.0, per_host_concurrency=8,
                          max_bytes=4096),  # /big serves 5000 bytes
        max_pixels=400_000, threads=8, resize_library=library,
    )  # fmt: skip
    with Server({}) as server:
        frame, kinds = posts(server)
        ledger = download_shard(frame, cfg, tmp_path)
    reasons = defaultdict(set)
    for post_id, status, error in ledger.select("id", "status", "error").iter_rows():
        assert status == "failed", (kinds[post_id], error)
        reasons[kinds[post_id]].add(error)
    assert {kind: len(texts) for kind, texts in reasons.items() if len(texts) != 1} == {}
    every = [text for texts in reasons.values() for text in texts]
    assert not [t for t in every if ADDRESS.search(t) or str(tmp_path) in t or "BytesIO" in t]
    assert reasons["html page"] == {"not a readable image: an HTML page"}
    detail = "truncated or corrupt data" if library == "pyvips" else "image file is truncated"
    assert reasons["truncated jpeg"] == {f"not a readable image: broken JPEG ({detail})"}
    assert reasons["md5 mismatch"] == {"md5 differs from metadata (the file is not the one listed)"}
    top = ledger_counts(ledger)["top_errors"]
    assert len(top) == 10 and set(top.values()) == {2}  # each kind: its own line, both posts
