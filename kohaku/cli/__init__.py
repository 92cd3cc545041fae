"""The `kohaku` command line: every stage as a subcommand, in this process, without Prefect.

One module per command group, each adding its subcommands to the parser:
`data` (synth, sample, tag, build-dataset, download, buckets, config, export-parquet),
`metadata` (the metadata store), `model` (train, evaluate, merge, export) and `ops` (demo,
serve: Prefect in child processes). `common` holds the config flags and the one-line
errors: a config or input error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging

from kohaku.cli import data, metadata, model, ops
from kohaku.cli.common import one_line_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kohaku", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (data, metadata, model, ops):
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    with one_line_errors("kohaku"):
        args.func(args)
