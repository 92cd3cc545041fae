"""The EMA's weights offered beside the raw ones: `step-NNNNNN-ema` and `final-ema` in the
checkpoint list (not with `evaluate.ema = false`), sampled on the tiny SDXL into pictures
that differ from the raw ones and match sampling with the EMA's LoKr file merged; the trend
and tables carry the extra labels."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from kohaku.evaluate import report
from kohaku.evaluate.config import EvaluateConfig
from kohaku.evaluate.generate import Sampler, list_checkpoints
from kohaku.evaluate.report import build_report, read_summaries
from kohaku.evaluate.run import plan, run_evaluate
from kohaku.evaluate.scores import Summary, ok
from kohaku.sdxl import lokr
from kohaku.sdxl.model import check_model_path, load_sdxl
from kohaku.stage import config_hash
from kohaku.train.ema import EMA_LOKR, META_EMA
from tests.evaluate.conftest import tiny_config
from tests.evaluate.test_run import pixels


def add_ema(run: Path, model: Path) -> None:
    """The EMA of steps 1 and 2 (their mean) as step 2's ema.safetensors (training names)
    and as lokr-ema.safetensors (kohya names, fp32 like the fixture's lokr.safetensors)."""
    ckpts = run / "train/checkpoints"
    one, two = (load_file(str(ckpts / f"step-{s:06d}/adapter.safetensors")) for s in (1, 2))
    ema = {k: (one[k] + two[k]) / 2 for k in two}
    save_file(ema, str(ckpts / "step-000002/ema.safetensors"))
    parts = load_sdxl(check_model_path(model))
    models = {c: getattr(parts, c) for c in ("unet", "text_encoder", "text_encoder_2")}
    adapters = lokr.attach(lokr.load_preset("attn-only"), models, seed=0)
    for c, net in adapters.networks.items():
        net.load_state_dict({k.split(".", 1)[1]: v for k, v in ema.items()
                             if k.split(".", 1)[0] == c})  # fmt: skip
    lokr.save(adapters, run / "train" / EMA_LOKR, torch.float32,
              extra={META_EMA: json.dumps({"decay": 0.5})})  # fmt: skip


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, eval_run: Path, tiny_sdxl_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("ema") / "run"
    shutil.copytree(eval_run, run)
    add_ema(run, tiny_sdxl_dir)
    return run


def test_the_list_offers_the_ema_beside_each_checkpoint(ema_run: Path) -> None:
    labels = [c.label for c in list_checkpoints(ema_run, "all", include_base=True)]
    assert labels == ["base", "step-000001", "step-000002", "step-000002-ema", "final",
                      "final-ema"]  # fmt: skip
    assert [c.label for c in list_checkpoints(ema_run, [2])] == ["step-000002", "step-000002-ema"]
    final = list_checkpoints(ema_run, "final")
    assert [(c.label, c.step, c.names, c.path.name) for c in final] == [
        ("final", 3, "kohya", "lokr.safetensors"), ("final-ema", 3, "kohya", EMA_LOKR)]  # fmt: skip
    assert [c.label for c in list_checkpoints(ema_run, "all", ema=False)] == [
        "step-000001", "step-000002", "final"]  # fmt: skip


def test_the_switch_keeps_the_config_hash_of_before_it() -> None:
    assert "ema" not in EvaluateConfig().model_dump_json()
    assert "ema" in EvaluateConfig(ema=False).model_dump_json()
    assert config_hash(EvaluateConfig(ema=False)) != config_hash(EvaluateConfig())


def test_ema_pictures_differ_from_the_raw_ones_and_match_the_merged_file(ema_run, tmp_path):
    """final and final-ema sampled (hooked, fp32) with one prompt and seed; step 2's EMA
    (training names) gives the very pictures of final-ema (kohya names, the same weights)."""
    run = tmp_path / "run"
    shutil.copytree(ema_run, run)
    cfg = tiny_config(characters=1, styles=0, quality_probes=False, seeds=[0])
    run_evaluate(cfg, run)
    run_evaluate(cfg.model_copy(update={"checkpoints": [2]}), run)
    name = "images/character-0000-s0.png"
    final, ema, step2_ema = (pixels(run / f"evaluate/{label}" / name)
                             for label in ("final", "final-ema", "step-000002-ema"))  # fmt: skip
    assert np.abs(final - ema).max() > 0 and np.array_equal(ema, step2_ema)
    p = plan(cfg.model_copy(update={"apply": "merge"}), run)
    final_ema = next(c for c in p.checkpoints if c.label == "final-ema")
    sampler = Sampler(p.source, p.cfg, run, [final_ema])
    sampler.use(final_ema)
    (merged,) = sampler.sample(p.jobs[:1])
    assert np.abs(np.asarray(merged, dtype=np.int16) - ema).max() <= 2
    labels = [s.label for s in read_summaries(run)]
    assert labels == ["step-000002", "step-000002-ema", "final", "final-ema"]
    assert set(build_report(run).grids) == set(labels)


def test_trend_draws_the_ema_as_its_own_line() -> None:
    def summary(label: str, step: int | None, clip: float) -> Summary:
        return Summary(label, step, (ok("clip_score", clip, 4),))

    summaries = [summary("final-ema", None, 33.0), summary("base", 0, 20.0),
                 summary("step-000100-ema", 100, 27.0), summary("step-000100", 100, 25.0),
                 summary("final", None, 30.0)]  # fmt: skip
    assert [s.label for s in report.ordered(summaries)] == [
        "base", "step-000100", "step-000100-ema", "final", "final-ema"]  # fmt: skip
    (row,) = report.trend_table(summaries)
    assert row["change"] == 10.0 and row["change_ema"] == 13.0  # both from the base
    img = np.asarray(Image.open(io.BytesIO(report.trend_png(summaries))))
    for color in (report.LINE, report.EMA_LINE):
        assert (img == color).all(axis=-1).any(), color
