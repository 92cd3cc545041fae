"""Snapshots of the metadata store: which partition files make up the metadata at one time.

Reads and writes `<store>/store.json` (format and partition width),
`<store>/snapshots/<YYYYMMDD>-<hash12>.json` (one immutable file per snapshot, written
atomically) and `<store>/LATEST` (the id of the newest complete snapshot, replaced last).
Partition files live in `<store>/parts/<table>/<lo>-<sha256:16>.parquet`; their names carry
their content hash, so snapshots share every partition that did not change and a snapshot's
id (date + hash of its file names) identifies its content.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kohaku.errors import InputError
from kohaku.stage import atomic_write_text

STORE_JSON, LATEST, SNAPSHOTS, PARTS = "store.json", "LATEST", "snapshots", "parts"
TABLES = ("post", "tag", "posttagrelation")
# the id column each table is partitioned by
PARTITION_KEY = {"post": "id", "tag": "id", "posttagrelation": "post_id"}
STORE_FORMAT = 1
SNAPSHOT_ID = re.compile(r"^\d{8}-[0-9a-f]{12}$")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StoreInfo(_Model):
    """`<store>/store.json`: fixed when the store is created."""

    format: int = Field(STORE_FORMAT, description="store layout version")
    partition_ids: int = Field(ge=1, description="post ids per post and relation partition")
    tag_partition_ids: int = Field(ge=1, description="tag ids per tag partition")

    def width(self, table: str) -> int:
        return self.tag_partition_ids if table == "tag" else self.partition_ids


class PartFile(_Model):
    """One partition file: ids [lo, lo + width) of its table's key."""

    file: str = Field(description="path relative to the store")
    lo: int = Field(ge=0, description="first id of the partition")
    rows: int = Field(ge=0, description="rows in the file")


class Snapshot(_Model):
    """The metadata at one time: a list of partition files per table."""

    id: str = Field(description="<YYYYMMDD>-<first 12 hex of the content hash>")
    created_at: str = Field(description="UTC time the snapshot was written (ISO-8601)")
    parent: str | None = Field(description="snapshot this one was derived from")
    tables: dict[str, list[PartFile]] = Field(description="table -> partitions, by lo")
    max_post_id: int = Field(description="highest post id")
    posts: int = Field(description="post rows")
    origin: dict = Field(description="what made it: import source or sync counts")

    def files(self, store: Path, table: str) -> list[Path]:
        return [Path(store) / p.file for p in self.tables[table]]


def content_hash(tables: dict[str, list[PartFile]]) -> str:
    """Hash of the partition file names (themselves content hashes), table by table."""
    names = {t: sorted(p.file for p in tables[t]) for t in TABLES}
    return hashlib.sha256(json.dumps(names, sort_keys=True).encode()).hexdigest()


def is_store(path: Path) -> bool:
    return (Path(path) / STORE_JSON).is_file()


def read_info(store: Path) -> StoreInfo:
    path = Path(store) / STORE_JSON
    if not path.is_file():
        raise InputError(f"{store} is not a metadata store (no {STORE_JSON}); "
                         "create one with `kohaku metadata import`")  # fmt: skip
    return StoreInfo.model_validate_json(path.read_text())


def latest_id(store: Path) -> str | None:
    path = Path(store) / LATEST
    return path.read_text().strip() if path.is_file() else None


def resolve_id(store: Path, name: str = "latest") -> str:
    """The snapshot id `name` stands for ("latest" or an id); the snapshot must exist."""
    store = Path(store)
    sid = latest_id(store) if name == "latest" else name
    if sid is None:
        raise InputError(f"metadata store {store} has no snapshot yet: run `kohaku metadata "
                         "import` (or a sync) first")  # fmt: skip
    if not SNAPSHOT_ID.match(sid) or not (store / SNAPSHOTS / f"{sid}.json").is_file():
        known = ", ".join(list_ids(store)[-5:]) or "none"
        raise InputError(f"metadata store {store} has no snapshot {sid!r} (newest: {known})")
    return sid


def read_snapshot(store: Path, name: str = "latest") -> Snapshot:
    sid = resolve_id(store, name)
    return Snapshot.model_validate_json((Path(store) / SNAPSHOTS / f"{sid}.json").read_text())


def list_ids(store: Path) -> list[str]:
    """The snapshot ids of `store`, oldest first; InputError when it is no metadata store
    (a mistyped `--store` must not read as a store without snapshots)."""
    read_info(store)
    return sorted(p.stem for p in (Path(store) / SNAPSHOTS).glob("*.json")
                  if SNAPSHOT_ID.match(p.stem))  # fmt: skip


def publish(store: Path, snap: Snapshot) -> None:
    """Write the snapshot file, then point LATEST at it (the commit point of a sync)."""
    store = Path(store)
    for table in TABLES:
        missing = [p for p in snap.files(store, table) if not p.is_file()]
        if missing:
            raise RuntimeError(f"snapshot {snap.id} names missing files {missing[:3]}")
    path = store / SNAPSHOTS / f"{snap.id}.json"
    if not path.is_file():  # same id = same content: an existing snapshot is never rewritten
        atomic_write_text(path, snap.model_dump_json(indent=1))
    atomic_write_text(store / LATEST, snap.id + "\n")
