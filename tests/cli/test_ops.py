"""The demo's closing print: the first captions, and what training draws for posts with a
natural-language text and one without."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from kohaku.cli.ops import _show_captions
from kohaku.config import load_config
from kohaku.demo.run import DEMO_TOML
from tests.train.test_data import captions_frame


def test_the_demo_shows_captions_and_the_draws_of_texts(tmp_path: Path, capsys):
    captions = tmp_path / "captions.parquet"
    texts = pl.Series([None, "A girl by the sea.", None, "Two girls."], dtype=pl.String)
    captions_frame([10, 11, 12, 13]).with_columns(caption=pl.lit("c"), text=texts).write_parquet(
        captions
    )
    (tmp_path / "demo.toml").write_text(DEMO_TOML.format(split=100, first=10))
    config = load_config(tmp_path / "demo.toml")  # as `kohaku demo` loads it
    torch_before = "torch" in sys.modules
    _show_captions(captions, config, n=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:3] == [f"4 captions in {captions}; the first 2:", "  10: c", "  11: c"]
    assert lines[3].startswith("what training draws at epoch 0 (per step: tags 0.5, text 0.25,")
    drawn = dict(line.strip().split(" ", 1) for line in lines[4:])
    assert list(drawn) == ["10", "11", "13"]  # both texts, the first post without
    assert drawn["10"].startswith("[no text: its tags]: count10, ")  # drew text, has none
    assert drawn["11"] == (
        "[text]: count11, character11, copyright11, A girl by the sea., masterpiece, highres, safe"
    )  # in place of the general tags
    assert drawn["13"].startswith("[tags]: count13, ")
    assert ("torch" in sys.modules) == torch_before  # no torch for the print
    _show_captions(captions)  # without a config: the captions alone
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
