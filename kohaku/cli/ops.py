"""The operations commands: `demo` builds the bundled synthetic demo and runs the Prefect
flow (`python -m flows.pipeline`) in a child process; `serve` starts a Prefect server and
the deployments as child processes, so that this package never imports Prefect. Reads a
run config; writes the demo folder (`demo`) or a Prefect home (`serve`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from kohaku.config import RunConfig, load_config, stage_section
from kohaku.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]  # where `flows/` lives, the flow's working dir


def cmd_demo(args: argparse.Namespace) -> None:
    from kohaku.demo.images import ImageServer
    from kohaku.demo.run import DEMO_URL_KEY, prepare_demo

    root = args.dir.resolve()
    config_path = prepare_demo(root, posts=args.posts)
    env = {**os.environ, **demo_prefect_env(root), "OMP_NUM_THREADS": "1"}
    with ImageServer(root / "metadata" / "danbooru.db") as server:
        print(f"demo image server on http://127.0.0.1:{server.port}")
        cmd = [sys.executable, "-m", "flows.pipeline", "--config", str(config_path),
               "--set", f"{DEMO_URL_KEY}={server.url_template}"]  # fmt: skip
        print(f"running: {' '.join(cmd)}")
        code = subprocess.call(cmd, env=env, cwd=REPO)
        if code != 0:
            raise SystemExit(code)
    _show_captions(root / "run" / "tag" / "captions.parquet", load_config(config_path))
    _show_stages(root)


def _show_stages(root: Path) -> None:
    from kohaku.demo.run import stage_summary

    run = root / "run"
    print(f"\nwhat each stage made, under {run}:")
    for line in stage_summary(run):
        print(f"  {line}")
    print(f"the libraries' own messages (LyCORIS, transformers, ...): {run / 'logs'}")
    print(f"the Prefect runs, artifacts and logs: PREFECT_HOME={root / 'prefect'} kohaku serve")


def cmd_serve(args: argparse.Namespace) -> None:
    from kohaku.ops.serve import run_until_stopped, serve_deployments, start_server

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


def _show_captions(path: Path, config: RunConfig | None = None, n: int = 3) -> None:
    """The tag stage's first captions; with a [train] section, also what training draws
    for posts with a natural-language text and one without (its tags)."""
    import polars as pl

    frame = pl.read_parquet(path, columns=["id", "caption"])
    print(f"\n{frame.height} captions in {path}; the first {n}:")
    for post_id, caption in frame.head(n).iter_rows():
        print(f"  {post_id}: {caption}")
    if config is not None and config.train is not None:
        _show_draws(path, stage_section(config, "train"))


def _show_draws(path: Path, train: TrainConfig) -> None:
    # kohaku.train.data imports no torch (only kohaku.train.loader and the trainer do)
    from kohaku.train.data import example_captions

    c = train.captions
    print(f"what training draws at epoch 0 (per step: tags {c.p_tags}, text {c.p_text}, "
          f"both {c.p_both}; tag dropout {c.tag_dropout}):")  # fmt: skip
    for post_id, drawn in example_captions(path, train.layout, c, train.seed):
        kind = "no text: its tags" if drawn.fallback else drawn.kind or "dropped"
        print(f"  {post_id} [{kind}]: {drawn.text}")


def demo_prefect_env(root: Path) -> dict[str, str]:
    """A project-local Prefect home on SQLite, no telemetry (prefect-notes.md)."""
    return {
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(root / "prefect")),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the temporary server needs longer than the default on a busy 2-core machine
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }


def add_commands(sub) -> None:
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
