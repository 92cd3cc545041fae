"""Prune old snapshots of the metadata store and the partition files only they used.

Reads: `<store>/snapshots/*.json`, `LATEST`. Writes: removes the snapshot files older than
the newest `keep` (never LATEST, never an id in `protect`), then every file under
`<store>/parts/` that no remaining snapshot names. Runs under the sync lock, so a sync's
new, not yet published partitions are never taken. A pruned snapshot can no longer be
sampled: keep the ids that runs you may rebuild recorded (`protect`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kohaku.errors import ConfigError
from kohaku.metadata.snapshot import PARTS, SNAPSHOTS, TABLES, latest_id, list_ids, read_snapshot
from kohaku.metadata.sync import store_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    snapshots_removed: list[str]
    files_removed: int
    bytes_freed: int


def prune_store(store: Path, keep: int, protect: tuple[str, ...] = ()) -> PruneResult:
    """Keep the newest `keep` snapshots (and `protect`), drop the rest and unused files."""
    if keep < 1:
        raise ConfigError("keep must be >= 1: the latest snapshot is always kept")
    store = Path(store)
    with store_lock(store):
        ids = list_ids(store)
        kept = set(ids[-keep:]) | set(protect) | {latest_id(store)}
        dropped = [sid for sid in ids if sid not in kept]
        for sid in dropped:
            (store / SNAPSHOTS / f"{sid}.json").unlink()
        used = {p for sid in ids if sid in kept for p in _files(store, sid)}
        files, freed = 0, 0
        for path in (store / PARTS).glob("*/*.parquet"):
            if str(path.relative_to(store)) not in used:
                freed += path.stat().st_size
                path.unlink()
                files += 1
    log.info("prune: removed %d snapshots, %d files (%d bytes)", len(dropped), files, freed)
    return PruneResult(dropped, files, freed)


def _files(store: Path, sid: str) -> set[str]:
    snap = read_snapshot(store, sid)
    return {p.file for t in TABLES for p in snap.tables[t]}
