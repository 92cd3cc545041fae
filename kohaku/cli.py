"""The `kohaku` command line.

Library commands (`synth`, `sample`, `tag`, `build-dataset`, `config`) run without
Prefect. `demo` builds the bundled synthetic demo and runs the Prefect flow
(`python -m flows.pipeline`) in a child process, and `serve` starts a Prefect server and
the deployments as child processes, so this package itself never imports Prefect.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from kohaku.config import RunConfig, load_config
from kohaku.errors import ConfigError

log = logging.getLogger("kohaku")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="run config TOML")
    p.add_argument("--preset", help="start from a built-in preset: delta, epsilon, gamma")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a field, e.g. sample.seed=3")  # fmt: skip
    p.add_argument("--run-dir", type=Path, help="override run_dir")


def _load(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(str(args.run_dir.resolve()))}")
    return load_config(args.config, args.preset, overrides)


def cmd_synth(args: argparse.Namespace) -> None:
    from kohaku.api_pages import write_api_pages
    from kohaku.synth import generate_danbooru_db

    summary = generate_danbooru_db(args.out, args.posts, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {summary.posts} posts, {summary.relations} tag rows to {summary.path}")
    if args.api_pages:
        pages = write_api_pages(args.out, args.api_pages)
        print(f"wrote {len(pages)} /posts.json pages to {args.api_pages}")


def cmd_export(args: argparse.Namespace) -> None:
    from kohaku.sample.export import export_parquet

    summary = export_parquet(args.source, args.out, threads=args.threads,
                             memory_limit=args.memory_limit)  # fmt: skip
    print(f"exported {json.dumps(summary['rows'])} to {args.out} in {summary['timings']}s")


def cmd_metadata_import(args: argparse.Namespace) -> None:
    from kohaku.metadata.store import import_metadata

    snap = import_metadata(args.source, args.store, partition_ids=args.partition_ids,
                           tag_partition_ids=args.tag_partition_ids, threads=args.threads,
                           memory_limit=args.memory_limit)  # fmt: skip
    print(f"snapshot {snap.id}: {snap.posts} posts, {len(snap.tables['post'])} post "
          f"partitions in {args.store}")  # fmt: skip


def cmd_metadata_sync(args: argparse.Namespace) -> None:
    from kohaku.metadata.config import load_sync_config
    from kohaku.metadata.sync import sync_metadata

    overrides = list(args.overrides)
    if args.store:
        overrides.append(f"store={json.dumps(str(args.store.resolve()))}")
    print(sync_metadata(load_sync_config(args.config, overrides)).model_dump_json(indent=2))


def cmd_metadata_snapshots(args: argparse.Namespace) -> None:
    from kohaku.metadata.snapshot import latest_id, list_ids

    latest = latest_id(args.store)
    for sid in list_ids(args.store):
        print(sid + ("  (latest)" if sid == latest else ""))


def cmd_metadata_prune(args: argparse.Namespace) -> None:
    from kohaku.metadata.prune import prune_store

    res = prune_store(args.store, args.keep, tuple(args.protect))
    print(f"removed {len(res.snapshots_removed)} snapshots, {res.files_removed} files, "
          f"{res.bytes_freed / 2**20:.1f} MiB")  # fmt: skip


def _metadata_parser(sub) -> None:
    meta = sub.add_parser("metadata", help="the metadata store: import, sync, snapshots")
    msub = meta.add_subparsers(dest="metadata_command", required=True)
    p = msub.add_parser("import", help="import SQLite / parquet / posts.json into a new store")
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--partition-ids", type=int, default=100_000, help="post ids per partition")
    p.add_argument("--tag-partition-ids", type=int, default=1_000_000, help="tag ids per file")
    p.add_argument("--threads", type=int)
    p.add_argument("--memory-limit")
    p.set_defaults(func=cmd_metadata_import)
    p = msub.add_parser("sync", help="fetch new and changed posts from the danbooru API")
    p.add_argument("--config", "-c", type=Path, help="sync TOML (store, api_url, [fetch])")
    p.add_argument("--store", type=Path, help="the store folder (overrides the config's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. recent_window=20000")  # fmt: skip
    p.set_defaults(func=cmd_metadata_sync)
    p = msub.add_parser("snapshots", help="list the store's snapshots")
    p.add_argument("--store", type=Path, required=True)
    p.set_defaults(func=cmd_metadata_snapshots)
    p = msub.add_parser("prune", help="drop old snapshots and the files only they used")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--keep", type=int, required=True, help="newest snapshots kept")
    p.add_argument("--protect", action="append", default=[], help="a snapshot id to keep")
    p.set_defaults(func=cmd_metadata_prune)


def cmd_sample(args: argparse.Namespace) -> None:
    from kohaku.sample import run_sample

    cfg = _load(args)
    res = cfg.resources
    manifest = run_sample(
        cfg.sample, cfg.run_dir, threads=args.threads or res.threads,
        memory_limit=args.memory_limit or res.memory_limit,
    )  # fmt: skip
    _report(manifest, cfg.run_dir / "sample")


def cmd_tag(args: argparse.Namespace) -> None:
    from kohaku.tagging import run_tag

    cfg = _load(args)
    manifest = run_tag(cfg.tag, cfg.run_dir, batch_posts=cfg.resources.tag_batch_posts)
    _report(manifest, cfg.run_dir / "tag")


def cmd_download(args: argparse.Namespace) -> None:
    from kohaku.download_stage import run_download

    cfg = _load(args)
    manifest = run_download(cfg.download, cfg.run_dir, shard_size=args.shard_size)
    _report(manifest, cfg.run_dir / "download")


def cmd_buckets(args: argparse.Namespace) -> None:
    from kohaku.buckets_stage import run_buckets

    cfg = _load(args)
    _report(run_buckets(cfg.run_dir), cfg.run_dir / "buckets")


def cmd_build_dataset(args: argparse.Namespace) -> None:
    cmd_sample(args)
    cmd_tag(args)


def cmd_config(args: argparse.Namespace) -> None:
    print(_load(args).model_dump_json(indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    from kohaku.demo import DEMO_URL_KEY, prepare_demo
    from kohaku.demo_images import ImageServer

    root = args.dir.resolve()
    config_path = prepare_demo(root, posts=args.posts)
    env = {**os.environ, **demo_prefect_env(root), "OMP_NUM_THREADS": "1"}
    with ImageServer(root / "metadata" / "danbooru.db") as server:
        print(f"demo image server on http://127.0.0.1:{server.port}")
        cmd = [sys.executable, "-m", "flows.pipeline", "--config", str(config_path),
               "--set", f"{DEMO_URL_KEY}={server.url_template}"]  # fmt: skip
        print(f"running: {' '.join(cmd)}")
        code = subprocess.call(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
        if code != 0:
            raise SystemExit(code)
    _show_captions(root / "run" / "tag" / "captions.parquet")
    print(f"images and bucket manifest: {root / 'run' / 'buckets' / 'manifest.parquet'}")
    print(f"trained LoKr: {root / 'run' / 'train' / 'lokr.safetensors'}")


def cmd_serve(args: argparse.Namespace) -> None:
    from kohaku.serve import run_until_stopped, serve_deployments, start_server

    if args.config:  # one clear error before anything starts
        load_config(args.config, None, args.overrides)
    home = Path(os.environ.get("PREFECT_HOME") or args.home).resolve()
    served = start_server(home, args.port, args.host)
    flags = [f"--set={item}" for item in args.overrides] + [f"--rebuild-cron={args.rebuild_cron}"]
    if args.config:
        flags += ["--config", str(args.config.resolve())]
    if args.sync_config:
        flags += ["--sync-config", str(args.sync_config.resolve())]
    serve_deployments(served, flags)
    print(f"Prefect UI: {served.url}", flush=True)
    print(f"API: {served.url}/api (PREFECT_API_URL for flows and workers); "
          f"Prefect home {home}; Ctrl-C stops", flush=True)  # fmt: skip
    raise SystemExit(run_until_stopped(served))


def _show_captions(path: Path, n: int = 3) -> None:
    import polars as pl

    frame = pl.read_parquet(path, columns=["id", "caption"])
    print(f"\n{frame.height} captions in {path}; the first {n}:")
    for post_id, caption in frame.head(n).iter_rows():
        print(f"  {post_id}: {caption}")


def demo_prefect_env(root: Path) -> dict[str, str]:
    """A project-local Prefect home on SQLite, no telemetry (prefect-notes.md)."""
    return {
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(root / "prefect")),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the temporary server needs longer than the default on a busy 2-core machine
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }


def _report(manifest, stage_dir: Path) -> None:
    print(f"{manifest.stage}: {json.dumps(manifest.counts, default=str)[:2000]}")
    print(f"{manifest.stage}: done in {manifest.timings.get('total', 0):.2f}s -> {stage_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kohaku", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="generate a synthetic danbooru2023 SQLite database")
    p.add_argument("--posts", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--api-pages", type=Path, help="also write /posts.json pages here")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)
    for name, func, text in (
        ("sample", cmd_sample, "select posts (DuckDB)"),
        ("tag", cmd_tag, "build captions (Polars)"),
        ("build-dataset", cmd_build_dataset, "sample then tag, without Prefect"),
        ("download", cmd_download, "fetch, verify and resize the sampled posts' images"),
        ("buckets", cmd_buckets, "the bucket manifest of the downloaded images"),
        ("config", cmd_config, "print the resolved config"),
    ):
        p = sub.add_parser(name, help=text)
        _config_args(p)
        p.add_argument("--threads", type=int, help="DuckDB threads (default: all cores)")
        p.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 6GB (spills beyond)")
        p.set_defaults(func=func)
        if name == "download":
            p.add_argument("--shard-size", type=int, default=2000, help="posts per shard")
    p = sub.add_parser("export-parquet", help="export metadata (e.g. the SQLite file) to "
                       "a parquet folder that the sample stage reads much faster")  # fmt: skip
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int)
    p.add_argument("--memory-limit")
    p.set_defaults(func=cmd_export)
    _metadata_parser(sub)
    p = sub.add_parser("demo", help="the bundled synthetic demo, through Prefect")
    p.add_argument("--dir", type=Path, default=Path("demo-run"))
    p.add_argument("--posts", type=int, default=3000)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("serve", help="a local Prefect server (SQLite) with every deployment "
                       "served; prints the UI URL")  # fmt: skip
    p.add_argument("--config", "-c", type=Path, help="the run config deployments default to")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a default override of every deployment")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4200, help="0 = a free port")
    p.add_argument("--home", type=Path, default=Path(".kohaku/prefect"),
                   help="Prefect home (database, settings) unless PREFECT_HOME is set")  # fmt: skip
    p.add_argument("--rebuild-cron", default="0 3 * * 1",
                   help="cron of the scheduled dataset rebuild ('' for none)")  # fmt: skip
    p.add_argument("--sync-config", type=Path,
                   help="a metadata sync TOML: also serve sync-metadata/daily")  # fmt: skip
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    try:
        args.func(args)
    except (ConfigError, FileExistsError) as exc:
        print(f"kohaku: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
