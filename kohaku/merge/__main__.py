"""`python -m kohaku.merge RECIPE.toml`: run one merge recipe and print what it wrote."""

from __future__ import annotations

import argparse
import logging
import sys

from kohaku.errors import ConfigError
from kohaku.merge import load_recipe, merge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kohaku.merge", description=__doc__)
    parser.add_argument("recipe", help="merge recipe TOML")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = merge(load_recipe(args.recipe))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{result.output}: {result.tensors} tensors, {result.bytes / 1e9:.2f} GB, "
        f"{result.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
