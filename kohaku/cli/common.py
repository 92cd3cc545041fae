"""What the command groups share: the config flags (`--config`, `--preset`, `--set`,
`--run-dir`), loading a stage's config from them, the stage report, and one-line errors
(exit code 2) for what the user fixes. Reads a run config TOML; writes to the terminal."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kohaku.config import PRESETS, RunConfig, load_config
from kohaku.errors import user_message

USAGE_ERROR = 2  # argparse's exit code for a bad command line; bad input is the same


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="run config TOML")
    p.add_argument("--preset", help=f"start from a built-in preset: {', '.join(PRESETS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a field, e.g. sample.seed=3")  # fmt: skip
    p.add_argument("--run-dir", type=Path, help="override run_dir")


def load(args: argparse.Namespace, stage: str | None = None) -> RunConfig:
    """The config the flags give; of `stage` alone when given (only its sections needed)."""
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={json.dumps(str(args.run_dir.resolve()))}")
    return load_config(args.config, args.preset, overrides, stage)


def report(manifest, stage_dir: Path) -> None:
    print(f"{manifest.stage}: {json.dumps(manifest.counts, default=str)[:2000]}")
    print(f"{manifest.stage}: done in {manifest.timings.get('total', 0):.2f}s -> {stage_dir}")


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """A config or input error (`kohaku.errors.user_message`), or a stage failed by one, is
    one line on stderr and exit code 2; a crash keeps its traceback. Shared with the flows'
    `python -m flows.<name>`."""
    try:
        yield
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
