"""`python -m kohaku.cli`: the `kohaku` command."""

from kohaku.cli import main

main()
