"""The `metadata` command group: `import`, `sync`, `snapshots`, `prune` of the metadata
store (`kohaku.metadata`). Reads a source file or the danbooru API and a sync TOML;
writes the store folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_import(args: argparse.Namespace) -> None:
    from kohaku.metadata.store import import_metadata

    snap = import_metadata(args.source, args.store, partition_ids=args.partition_ids,
                           tag_partition_ids=args.tag_partition_ids, threads=args.threads,
                           memory_limit=args.memory_limit)  # fmt: skip
    print(f"snapshot {snap.id}: {snap.posts} posts, {len(snap.tables['post'])} post "
          f"partitions in {args.store}")  # fmt: skip


def cmd_sync(args: argparse.Namespace) -> None:
    from kohaku.metadata.config import load_sync_config
    from kohaku.metadata.sync import sync_metadata

    overrides = list(args.overrides)
    if args.store:
        overrides.append(f"store={json.dumps(str(args.store.resolve()))}")
    print(sync_metadata(load_sync_config(args.config, overrides)).model_dump_json(indent=2))


def cmd_snapshots(args: argparse.Namespace) -> None:
    from kohaku.metadata.snapshot import latest_id, list_ids

    ids = list_ids(args.store)  # one error, exit 2, when --store names no store
    latest = latest_id(args.store)
    for sid in ids:
        print(sid + ("  (latest)" if sid == latest else ""))
    if not ids:
        print(f"{args.store}: no snapshots yet (`kohaku metadata import` or a sync makes one)")


def cmd_prune(args: argparse.Namespace) -> None:
    from kohaku.metadata.prune import prune_store

    res = prune_store(args.store, args.keep, tuple(args.protect))
    print(f"removed {len(res.snapshots_removed)} snapshots, {res.files_removed} files, "
          f"{res.bytes_freed / 2**20:.1f} MiB")  # fmt: skip


def add_commands(sub) -> None:
    meta = sub.add_parser("metadata", help="the metadata store: import, sync, snapshots")
    msub = meta.add_subparsers(dest="metadata_command", required=True)
    p = msub.add_parser("import", help="import SQLite / parquet / posts.json into a new store")
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--partition-ids", type=int, default=100_000, help="post ids per partition")
    p.add_argument("--tag-partition-ids", type=int, default=1_000_000, help="tag ids per file")
    p.add_argument("--threads", type=int)
    p.add_argument("--memory-limit")
    p.set_defaults(func=cmd_import)
    p = msub.add_parser("sync", help="fetch new and changed posts from the danbooru API")
    p.add_argument("--config", "-c", type=Path, help="sync TOML (store, api_url, [fetch])")
    p.add_argument("--store", type=Path, help="the store folder (overrides the config's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. recent_window=20000")  # fmt: skip
    p.set_defaults(func=cmd_sync)
    p = msub.add_parser("snapshots", help="list the store's snapshots")
    p.add_argument("--store", type=Path, required=True)
    p.set_defaults(func=cmd_snapshots)
    p = msub.add_parser("prune", help="drop old snapshots and the files only they used")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--keep", type=int, required=True, help="newest snapshots kept")
    p.add_argument("--protect", action="append", default=[], help="a snapshot id to keep")
    p.set_defaults(func=cmd_prune)
