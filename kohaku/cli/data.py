"""The data commands: `synth`, `sample`, `tag`, `build-dataset`, `download`, `buckets`,
`config` and `export-parquet`. Each runs one library stage in this process (no Prefect)
on the run config; reads what the stage reads, writes `<run dir>/<stage>/`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kohaku.cli.common import config_args, load, report


def cmd_synth(args: argparse.Namespace) -> None:
    from kohaku.demo.api_pages import write_api_pages
    from kohaku.demo.synth import generate_danbooru_db

    summary = generate_danbooru_db(args.out, args.posts, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {summary.posts} posts, {summary.relations} tag rows to {summary.path}")
    if args.api_pages:
        pages = write_api_pages(args.out, args.api_pages)
        print(f"wrote {len(pages)} /posts.json pages to {args.api_pages}")


def cmd_export_parquet(args: argparse.Namespace) -> None:
    from kohaku.metadata.export import export_parquet

    summary = export_parquet(args.source, args.out, threads=args.threads,
                             memory_limit=args.memory_limit)  # fmt: skip
    print(f"exported {json.dumps(summary['rows'])} to {args.out} in {summary['timings']}s")


def cmd_sample(args: argparse.Namespace) -> None:
    from kohaku.sample import run_sample

    cfg = load(args, "sample")
    res = cfg.resources
    manifest = run_sample(
        cfg.sample, cfg.run_dir, threads=args.threads or res.threads,
        memory_limit=args.memory_limit or res.memory_limit,
    )  # fmt: skip
    report(manifest, cfg.run_dir / "sample")


def cmd_tag(args: argparse.Namespace) -> None:
    from kohaku.tag import run_tag

    cfg = load(args, "tag")
    manifest = run_tag(cfg.tag, cfg.run_dir, batch_posts=cfg.resources.tag_batch_posts)
    report(manifest, cfg.run_dir / "tag")


def cmd_download(args: argparse.Namespace) -> None:
    from kohaku.download.run import run_download

    cfg = load(args, "download")
    manifest = run_download(cfg.download, cfg.run_dir, shard_size=args.shard_size)
    report(manifest, cfg.run_dir / "download")


def cmd_buckets(args: argparse.Namespace) -> None:
    from kohaku.buckets.run import run_buckets

    cfg = load(args, "buckets")
    report(run_buckets(cfg.run_dir), cfg.run_dir / "buckets")


def cmd_build_dataset(args: argparse.Namespace) -> None:
    cmd_sample(args)
    cmd_tag(args)


def cmd_config(args: argparse.Namespace) -> None:
    print(load(args).model_dump_json(indent=2))


def add_commands(sub) -> None:
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
        config_args(p)
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
    p.set_defaults(func=cmd_export_parquet)
