"""Flow `merge`: weighted model arithmetic from a recipe TOML (sums and differences per
tensor, per-block weights, embeddings restored, a LoKr folded in), streamed tensor by
tensor; the result and its recipe show in the UI.
Run it: `python -m flows.merge recipe.toml`."""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from kohaku.cli.common import one_line_errors
from tasks.merge import merge_task


@flow(name="merge", log_prints=True)
def merge(recipe: Path) -> dict:
    """Merge the models of `recipe`; returns the output path and sizes."""
    result = merge_task(Path(recipe))
    text = Path(recipe).read_text()
    summary = f"**{result['output']}**: {result['tensors']} tensors, {result['bytes'] / 1e9:.2f} GB"
    create_markdown_artifact(f"{summary}\n\n```toml\n{text}\n```", key="merge-result",
                             description="merge: output and recipe")  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipe", type=Path)
    recipe = parser.parse_args(argv).recipe
    with one_line_errors("flows.merge"):
        print(merge(recipe))


if __name__ == "__main__":
    main()
