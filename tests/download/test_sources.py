"""Local image sources (a folder, danbooru2023-style tar shards), caption sidecars and the
journal, through the real download stage."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import polars as pl
import pytest
from PIL import Image, ImageChops, ImageStat

from kohaku.download.config import DownloadConfig
from kohaku.download.run import check_inputs, ledger_path, run_download
from kohaku.download.shard import LEDGER_SCHEMA, download_shard, merge_previous, read_journal
from kohaku.download.sources import LocalReader, build_index, choose
from kohaku.errors import InputError
from kohaku.stage import build_stage, write_manifest
from tests.download.test_shard import md5


def picture(w: int, h: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (w % 256, h % 256, 90)).save(buf, fmt)
    return buf.getvalue()


PNG_1 = picture(320, 200, "PNG")
PNG_2 = picture(200, 320, "PNG")
WEBP_3 = picture(256, 256, "WEBP")  # the danbooru2023 shards hold WebP re-encodes
JPG_1004 = picture(400, 300, "JPEG")


def stages(run_dir: Path, captions: dict[int, str] | None = None) -> None:
    """A sample stage of posts 1, 2, 3, 4, 1004 (md5s of the originals), and captions."""
    rows = [(1, md5(PNG_1), "png"), (2, md5(PNG_2), "png"), (3, md5(b"original"), "png"),
            (4, md5(b"nowhere"), "png"), (1004, md5(JPG_1004), "jpg")]  # fmt: skip
    posts = pl.DataFrame(rows, schema=["id", "md5", "file_ext"], orient="row")
    posts = posts.with_columns(file_url=pl.lit(None, pl.String))
    with build_stage(run_dir, "sample") as build:
        posts.write_parquet(build.dir / "posts.parquet")
        write_manifest(build, stage_version="1", config_hash="handmade", inputs={},
                       outputs={"posts": "posts.parquet"}, counts={}, versions={})  # fmt: skip
    if captions is not None:
        with build_stage(run_dir, "tag") as build:
            frame = pl.DataFrame({"id": list(captions), "caption": list(captions.values())})
            frame.write_parquet(build.dir / "captions.parquet")
            outputs = {"captions": "captions.parquet"}
            write_manifest(build, stage_version="1", config_hash="handmade", inputs={},
                           outputs=outputs, counts={}, versions={})  # fmt: skip


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_shards(folder: Path) -> Path:
    folder.mkdir()
    with tarfile.open(folder / "data-0001.tar", "w") as tar:
        add(tar, "1.png", PNG_1)
        add(tar, "notes.txt", b"not an image name")
        add(tar, "1004.jpg", JPG_1004)  # 1004 % 1000 == 4: not in "its" shard data-0004
        link = tarfile.TarInfo("2.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)  # links are never followed
    with tarfile.open(folder / "data-0002.tar", "w") as tar:
        add(tar, "sub/2.png", PNG_2)
        add(tar, "3.webp", WEBP_3)
    return folder


def image_folder(folder: Path) -> Path:
    (folder / "0001").mkdir(parents=True)
    (folder / "0001" / "1.png").write_bytes(PNG_1)
    (folder / "2.png").write_bytes(PNG_2)
    (folder / "2.webp").write_bytes(picture(10, 10, "WEBP"))  # the png (original) wins
    (folder / "3.webp").write_bytes(WEBP_3)
    (folder / "1004.jpg").write_bytes(JPG_1004)
    (folder / "readme.md").write_text("x")
    os.symlink("/etc/hostname", folder / "7.png")
    return folder


def config(source: str, path: Path, **kw) -> DownloadConfig:
    return DownloadConfig(source=source, source_path=path, threads=2, **kw)


def test_tar_index_opens_every_shard_and_keeps_only_image_names(tmp_path):
    index = build_index("tar", tar_shards(tmp_path / "tars"))
    assert index.select("id", "ext", "container", "member").rows() == [
        (1, "png", "data-0001.tar", "1.png"),
        (2, "png", "data-0002.tar", "sub/2.png"),
        (3, "webp", "data-0002.tar", "3.webp"),
        (1004, "jpg", "data-0001.tar", "1004.jpg"),
    ]
    reader = LocalReader("tar", tmp_path / "tars", max_bytes=1 << 20)
    entry = index.filter(pl.col("id") == 1004).row(0, named=True)
    assert reader.read(entry) == JPG_1004
    with pytest.raises(ValueError, match="byte limit"):
        LocalReader("tar", tmp_path / "tars", max_bytes=10).read(entry)


def test_folder_index_prefers_the_original_format(tmp_path):
    index = build_index("folder", image_folder(tmp_path / "imgs"))
    assert sorted(set(index["id"])) == [1, 2, 3, 1004]  # the symlink and readme are left out
    posts = pl.DataFrame({"id": [1, 2, 3, 9], "file_ext": ["png", "png", "png", "jpg"]})
    chosen = choose(index, posts)
    assert chosen.select("id", "member", "original").rows() == [
        (1, "0001/1.png", True), (2, "2.png", True), (3, "3.webp", False),
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["tar", "folder"])
def test_local_sources_through_the_stage(kind, tmp_path):
    src = tar_shards(tmp_path / "src") if kind == "tar" else image_folder(tmp_path / "src")
    run = tmp_path / "run"
    stages(run)
    manifest = run_download(config(kind, src), run, shard_size=3, show_progress=False)
    ledger = pl.read_parquet(run / "download" / "ledgers" / "*.parquet").sort("id")
    assert ledger["status"].to_list() == ["ok", "ok", "ok", "failed", "ok"]
    assert ledger["md5_checked"].to_list() == [True, True, False, None, True]
    assert ledger.filter(id=4)["error"].item() == f"not in the {kind} source"
    assert ledger.filter(id=3)["source"].item().startswith(kind)
    assert (manifest.counts["ok"], manifest.counts["md5_checked"]) == (4, 3)
    assert manifest.inputs["source"]["kind"] == kind
    row = ledger.filter(id=1004).row(0, named=True)
    assert (row["orig_w"], row["orig_h"]) == (400, 300)
    assert Image.open(run / "download" / row["path"]).size == (row["bucket_w"], row["bucket_h"])


def test_wrong_md5_in_a_local_original_is_refused(tmp_path):
    src = image_folder(tmp_path / "src")
    (src / "0001" / "1.png").write_bytes(PNG_2)  # same format, other bytes
    stages(tmp_path / "run")
    run_download(config("folder", src), tmp_path / "run", show_progress=False)
    ledger = pl.read_parquet(ledger_path(tmp_path / "run", 0))
    assert "differs from metadata" in ledger.filter(id=1)["error"].item()


def test_tar_index_is_reused_until_a_shard_changes(tmp_path):
    src, run = tar_shards(tmp_path / "src"), tmp_path / "run"
    stages(run)
    run_download(config("tar", src), run, show_progress=False)
    index = run / "download" / "source-index.parquet"
    first = index.stat().st_mtime_ns
    run_download(config("tar", src), run, show_progress=False)
    assert index.stat().st_mtime_ns == first
    with tarfile.open(src / "data-0003.tar", "w") as tar:
        add(tar, "4.png", picture(64, 64, "PNG"))
    run_download(config("tar", src), run, show_progress=False)
    assert 4 in pl.read_parquet(index)["id"].to_list()


def test_sidecars_hold_the_captions(tmp_path):
    run = tmp_path / "run"
    stages(run, captions={1: "1girl, solo", 2: "scenery", 3: "", 4: "x", 1004: "cat"})
    src = image_folder(tmp_path / "src")
    run_download(config("folder", src, sidecars=True), run, show_progress=False)
    images = run / "download" / "images"
    assert (images / "001" / "1.txt").read_text() == "1girl, solo"
    assert (images / "004" / "1004.txt").read_text() == "cat"
    assert (images / "001" / "1.webp").is_file()
    (images / "002" / "2.txt").unlink()  # a lost sidecar makes the post redone
    run_download(config("folder", src, sidecars=True), run, show_progress=False)
    assert (images / "002" / "2.txt").read_text() == "scenery"


def test_bad_inputs_fail_before_any_work(tmp_path):
    stages(tmp_path)
    with pytest.raises(InputError, match="is not a folder"):
        check_inputs(config("folder", tmp_path / "nope"), tmp_path)
    with pytest.raises(InputError, match="no .tar shards"):
        check_inputs(config("tar", tmp_path), tmp_path)
    with pytest.raises(InputError, match="run the tag stage"):
        check_inputs(DownloadConfig(sidecars=True), tmp_path)
    with pytest.raises(ValueError, match="needs source_path"):
        DownloadConfig(source="tar")
    with pytest.raises(ValueError, match="only for source"):
        DownloadConfig(source_path=tmp_path)


def test_journal_rows_override_the_older_ledger_and_torn_lines_are_ignored(tmp_path):
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"id": 2, "status": "ok", "path": "images/002/2.webp"}\n{"id": 3, "st')
    rows = read_journal(journal)
    assert rows["id"].to_list() == [2]
    older = pl.DataFrame([{"id": 1, "status": "ok"}, {"id": 2, "status": "failed"}],
                         schema=LEDGER_SCHEMA)  # fmt: skip
    merged = merge_previous(older, rows)
    assert merged.sort("id").select("id", "status").rows() == [(1, "ok"), (2, "ok")]


def test_jpeg_draft_keeps_geometry_of_a_rotated_photo(tmp_path):
    """A big JPEG stored sideways (EXIF orientation 6) decodes in draft mode at a reduced
    scale, yet lands in the same portrait bucket, with the same original size recorded,
    and nearly the same pixels as a full decode."""
    # 6400 px: twice the 2x draft request, so a real 1/2 DCT draft happens
    big = Image.linear_gradient("L").resize((6400, 3200)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92, exif=exif.tobytes())
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.jpg").write_bytes(buf.getvalue())
    outputs = []
    for draft in (True, False):
        run = tmp_path / f"run-{draft}"
        stages(run)
        run_download(config("folder", src, jpeg_draft=draft, image_format="png"), run,
                     show_progress=False)  # fmt: skip
        row = pl.read_parquet(ledger_path(run, 0)).filter(id=1).row(0, named=True)
        assert (row["orig_w"], row["orig_h"]) == (3200, 6400)
        img = Image.open(run / "download" / row["path"])
        assert img.size == (row["bucket_w"], row["bucket_h"]) and img.height > img.width
        outputs.append(img.convert("L"))
    diff = ImageChops.difference(outputs[0], outputs[1])
    assert ImageStat.Stat(diff).mean[0] < 2.0


def test_local_read_failures_have_stable_reasons(tmp_path):
    """The reader's messages name the file and its sizes; the ledger's reason does not."""
    src = image_folder(tmp_path / "src")
    posts = pl.DataFrame({"id": [1, 2, 1004], "md5": [md5(PNG_1), md5(PNG_2), md5(JPG_1004)],
                          "file_ext": ["png", "png", "jpg"]})  # fmt: skip
    posts = posts.join(choose(build_index("folder", src), posts), on="id", how="left")
    (src / "0001" / "1.png").unlink()  # gone since it was indexed
    (src / "2.png").write_bytes(PNG_2 + b"more")  # changed since it was indexed
    ledger = download_shard(posts, config("folder", src), tmp_path / "out")
    errors = dict(zip(ledger["id"], ledger["error"], strict=True))
    assert errors[1] == "cannot read: the file is gone from the folder source"
    assert errors[2] == "cannot read: the file changed since it was indexed"
    small = config("folder", src, fetch={"max_bytes": 10})  # the size is checked first
    errors = download_shard(posts, small, tmp_path / "out2")["error"]
    assert set(errors) == {"cannot read: file over fetch.max_bytes (10)"}
