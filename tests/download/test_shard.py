"""One download shard against a real local HTTP server: every post ends in exactly one
state, failures are recorded, files are whole, and a rerun fetches only what failed."""

from __future__ import annotations

import hashlib
import io

import polars as pl
import pytest
from PIL import Image

from kohaku.download.config import DownloadConfig
from kohaku.download.shard import download_shard, image_path, post_url
from kohaku.fetch import FetchConfig
from tests.fetch.server import Server


def png(w: int, h: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (200, 30, 30, 128) if mode == "RGBA" else "white").save(buf, "PNG")
    return buf.getvalue()


def jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


FILES = {
    "/img/1.jpg": jpeg(1600, 1200),
    "/img/2.png": png(300, 500, "RGBA"),
    "/img/3.jpg": jpeg(640, 640),  # served, but the metadata md5 is wrong
    "/img/5.png": b"<html>not an image</html>",
    "/img/6.png": png(6000, 6000, "L"),  # 36 MP, over the limit below
}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def server():
    with Server(dict(FILES)) as srv:
        yield srv


def shard(server: Server) -> pl.DataFrame:
    rows = [
        (1, md5(FILES["/img/1.jpg"]), "jpg", server.url("/img/1.jpg")),
        (2, md5(FILES["/img/2.png"]), "png", server.url("/img/2.png")),
        (3, "0" * 32, "jpg", server.url("/img/3.jpg")),
        (4, md5(b"x"), "jpg", server.url("/500")),
        (5, md5(FILES["/img/5.png"]), "png", server.url("/img/5.png")),
        (6, md5(FILES["/img/6.png"]), "png", server.url("/img/6.png")),
        (7, None, "jpg", None),
        (8, md5(b"x"), "jpg", "http://elsewhere.example/8.jpg"),
    ]
    return pl.DataFrame(rows, schema=["id", "md5", "file_ext", "file_url"], orient="row")


CFG = DownloadConfig(
    fetch=FetchConfig(allowed_hosts=["127.0.0.1"], retries=1, backoff_base=0.01),
    max_pixels=20_000_000, image_format="webp", threads=4,
)  # fmt: skip


@pytest.mark.parametrize("library", ["pyvips", "pillow"])
def test_every_post_ends_in_one_state(server, tmp_path, library):
    cfg = CFG.model_copy(update={"resize_library": library})
    ledger = download_shard(shard(server), cfg, tmp_path)
    status = dict(zip(ledger["id"], ledger["status"], strict=True))
    assert status == {1: "ok", 2: "ok", 3: "failed", 4: "failed", 5: "failed", 6: "failed",
                      7: "failed", 8: "failed"}  # fmt: skip
    errors = dict(zip(ledger["id"], ledger["error"], strict=True))
    assert "md5" in errors[3] and "HTTP 500" in errors[4]
    assert "not a readable image" in errors[5] and "pixel limit" in errors[6]
    assert errors[7] == "no URL in the metadata" and "allowed_hosts" in errors[8]
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["images/001/1.webp", "images/002/2.webp"]  # no partial or temp files


def test_ok_rows_record_the_placement(server, tmp_path):
    ledger = download_shard(shard(server), CFG, tmp_path)
    one = ledger.filter(pl.col("id") == 1).row(0, named=True)
    assert (one["orig_w"], one["orig_h"]) == (1600, 1200)
    img = Image.open(tmp_path / one["path"])
    assert img.size == (one["bucket_w"], one["bucket_h"]) and img.format == "WEBP"
    assert one["resized_w"] >= one["bucket_w"] and one["bytes"] == len(FILES["/img/1.jpg"])
    two = ledger.filter(pl.col("id") == 2).row(0, named=True)
    assert (two["bucket_w"], two["bucket_h"]) == (256, 448)  # small: not upscaled
    assert Image.open(tmp_path / two["path"]).mode == "RGB"  # alpha flattened


def test_rerun_fetches_only_what_failed(server, tmp_path):
    first = download_shard(shard(server), CFG, tmp_path)
    hits_before = dict(server.hits)
    server.files["/img/5.png"] = FILES["/img/1.jpg"]  # the server now serves a real image
    again = download_shard(shard(server), CFG, tmp_path, previous=first)
    fetched = {k: server.hits[k] - hits_before.get(k, 0) for k in server.hits}
    assert fetched["/img/1.jpg"] == 0 and fetched["/img/2.png"] == 0
    assert fetched["/img/3.jpg"] == 1 and fetched["/500"] == 2
    assert again["id"].to_list() == first["id"].to_list()
    assert again.filter(pl.col("id") == 1).equals(first.filter(pl.col("id") == 1))
    # post 5's md5 still names the old bytes: refused, not kept
    assert again.filter(pl.col("id") == 5)["status"].item() == "failed"


def test_a_done_post_whose_file_vanished_is_redone(server, tmp_path):
    first = download_shard(shard(server), CFG, tmp_path)
    (tmp_path / "images/001/1.webp").unlink()
    again = download_shard(shard(server), CFG, tmp_path, previous=first)
    assert again.filter(pl.col("id") == 1)["status"].item() == "ok"
    assert (tmp_path / "images/001/1.webp").is_file()


def test_url_template_and_paths():
    cfg = DownloadConfig(url_template="https://cdn.donmai.us/original/{md5_a}/{md5_b}/{md5}.{ext}")
    post = {"id": 42, "md5": "dc123eec97d06c3aa9cd53d65a2c7abf", "file_ext": "jpg"}
    assert post_url(post, cfg) == (
        "https://cdn.donmai.us/original/dc/12/dc123eec97d06c3aa9cd53d65a2c7abf.jpg"
    )
    assert post_url({"id": 1, "md5": None, "file_ext": "jpg"}, cfg) is None
    assert image_path(1042, cfg).as_posix() == "images/042/1042.webp"
