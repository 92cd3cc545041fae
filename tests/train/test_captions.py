"""Natural-language captions in a training run (issue 14, item 2) on the tiny SDXL: the kinds
drawn and the posts that fell back to their tags are counted in result.json and the train
manifest's counts; a config that draws texts from captions without any is one error before
any weight is loaded."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from kohaku.errors import ConfigError
from kohaku.train.config import TrainConfig
from kohaku.train.loop import Dist, Trainer
from kohaku.train.run import caption_counts, check_inputs
from tests.train.rundir import write_training_run


def config(model, **captions) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": {"path": str(model)}, "batch_size": 2, "max_steps": 2, "layout": "epsilon",
        "optim": {"kind": "adamw", "warmup_steps": 0}, "checkpoint_every": 100,
        "captions": captions,
    })  # fmt: skip


def add_texts(run, texts: dict[int, str]) -> None:
    path = run / "tag" / "captions.parquet"
    frame = pl.read_parquet(path)
    text = pl.Series([texts.get(i) for i in frame["id"]], dtype=pl.String)
    frame.with_columns(text=text).write_parquet(path)


def test_kinds_and_fallbacks_are_counted_in_the_result(tiny_sdxl_dir, tmp_path):
    """4 posts, 2 with a text, one epoch of 2 steps x 2 posts, every step asks for a text:
    the 2 with one get text or both, the other 2 fall back to their tags."""
    run = write_training_run(tmp_path, n=4, buckets=((64, 64),))
    add_texts(run, {100: "A picture of a girl.", 102: "Another picture."})
    cfg = config(tiny_sdxl_dir, p_tags=0.0, p_text=0.5, p_both=0.5, max_tokens=300)
    check_inputs(cfg, run)
    Trainer(cfg, run, Dist(0, 1, torch.device("cpu"))).train()
    result = json.loads((run / "train" / "result.json").read_text())
    got = {k: result[k] for k in ("captions_drawn", "captions_text_fallback")}
    assert got == {"captions_drawn": 4, "captions_text_fallback": 2}
    assert result["captions_text"] + result["captions_both"] == 2
    counts = caption_counts(result)
    assert counts["captions_text_fallback"] == 2 and counts["caption_max_tokens"] == 300


def test_texts_asked_of_captions_without_any_fail_before_loading(tiny_sdxl_dir, tmp_path):
    run = write_training_run(tmp_path, n=4, buckets=((64, 64),))
    with pytest.raises(ConfigError, match="none of the 4 images has a text"):
        check_inputs(config(tiny_sdxl_dir, p_tags=0.8, p_both=0.2), run)
    check_inputs(config(tiny_sdxl_dir), run)  # tags only: fine
