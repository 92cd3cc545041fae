"""Images already on disk: a folder of `<post id>.<ext>` files, or danbooru2023-style tar
shards (`data-NNNN.tar`, members `<post id>.<ext>`).

Reads: the folder (recursively, symlinks not followed) or every `*.tar` in the tar folder
(each one opened: posts are looked up in all of them, none is skipped on the guess that
`id % 1000` names the shard). Writes nothing: `build_index` returns one row per image
file (id, ext, container tar, member path, byte offset, size) and `LocalReader.read`
returns a file's bytes, bounded by a size limit. Only file names that are a post id and
an extension are indexed, so no metadata text ever becomes a path.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Literal

import polars as pl

LocalKind = Literal["folder", "tar"]
NAME = re.compile(r"^(\d{1,12})\.([A-Za-z0-9]{1,8})$")
INDEX_SCHEMA = {
    "id": pl.Int64, "ext": pl.String, "container": pl.String, "member": pl.String,
    "offset": pl.Int64, "size": pl.Int64,
}  # fmt: skip
JPEG_NAMES = {"jpg", "jpeg"}


def build_index(kind: LocalKind, root: Path) -> pl.DataFrame:
    """Every image file of the source; `container` is the tar's file name ('' for a
    folder), `member` the path inside the tar or relative to the folder."""
    rows = _index_folder(root) if kind == "folder" else _index_tars(root)
    return pl.DataFrame(rows, schema=INDEX_SCHEMA, orient="row").sort("id", "container", "member")


def source_files(kind: LocalKind, root: Path) -> list[Path]:
    """The tar files of a tar source (what its index depends on); a folder has none."""
    return sorted(Path(root).glob("*.tar")) if kind == "tar" else []


def _index_folder(root: Path) -> list[tuple]:
    rows = []
    for dirpath, _dirs, files in os.walk(root):  # followlinks=False: symlinks are skipped
        for name in files:
            match = NAME.match(name)
            path = Path(dirpath) / name
            if match is None or path.is_symlink() or not path.is_file():
                continue
            member = path.relative_to(root).as_posix()
            rows.append((int(match[1]), match[2].lower(), "", member, 0, path.stat().st_size))
    return rows


def _index_tars(root: Path) -> list[tuple]:
    rows = []
    for tar_path in source_files("tar", root):
        with tarfile.open(tar_path, mode="r:") as tar:  # uncompressed: members seekable
            for info in tar:
                match = NAME.match(Path(info.name).name)
                if match is None or not info.isreg():
                    continue
                ext = match[2].lower()
                rows.append((int(match[1]), ext, tar_path.name, info.name, info.offset_data,
                             info.size))  # fmt: skip
    return rows


def choose(index: pl.DataFrame, posts: pl.DataFrame) -> pl.DataFrame:
    """One index row per post that has a file: the file in the metadata's format when
    there is one (it can be checked against the md5), else the first by container and
    name. Adds `original` (same format as the metadata's file_ext)."""
    same_ext = pl.col("ext").replace({"jpeg": "jpg"}) == pl.col("file_ext").str.to_lowercase(
    ).replace({"jpeg": "jpg"})  # fmt: skip
    return (
        index.join(posts.select("id", "file_ext"), on="id")
        .with_columns(original=same_ext.fill_null(False))
        .sort("id", "original", "container", "member", descending=[False, True, False, False])
        .unique("id", keep="first", maintain_order=True)
        .drop("file_ext")
    )


class LocalReader:
    """Reads indexed files of one local source, never more than `max_bytes` each."""

    def __init__(self, kind: LocalKind, root: Path, max_bytes: int):
        self.kind, self.root, self.max_bytes = kind, Path(root), max_bytes

    def describe(self, entry: dict) -> str:
        """The ledger's `source` for an entry: `folder:<member>` or `tar:<tar>:<member>`."""
        if self.kind == "folder":
            return f"folder:{entry['member']}"
        return f"tar:{entry['container']}:{entry['member']}"

    def read(self, entry: dict) -> bytes:
        """The file's bytes; OSError or ValueError when it cannot be read whole."""
        size = entry["size"]
        if size > self.max_bytes:
            raise ValueError(f"{size} bytes is over the {self.max_bytes} byte limit")
        if self.kind == "folder":
            path = self.root / entry["member"]
            if path.is_symlink() or not path.is_file():
                raise FileNotFoundError(f"{entry['member']} is gone from the folder")
            with open(path, "rb") as f:
                data = f.read(size + 1)
        else:
            with open(self.root / entry["container"], "rb") as f:
                f.seek(entry["offset"])
                data = f.read(size)
        if len(data) != size:
            raise ValueError(f"read {len(data)} of {size} bytes: the file changed")
        return data
