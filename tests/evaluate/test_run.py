"""The evaluate stage end to end on CPU: tiny SDXL, two step checkpoints and the final LoKr,
tiny CLIP and a tiny TorchScript extractor; reuse of pictures and scores; the report."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from kohaku.errors import InputError
from kohaku.evaluate.generate import Checkpoint, Job, Sampler, list_checkpoints
from kohaku.evaluate.report import build_report, read_summaries
from kohaku.evaluate.run import plan, run_evaluate
from tests.evaluate.conftest import tiny_config

LABELS = ["base", "step-000001", "step-000002", "final"]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_writes_pictures_grids_scores_and_manifest(evaluated) -> None:
    run, cfg, manifest, calls = evaluated
    out = run / "evaluate"
    prompts = pl.read_parquet(out / "prompts.parquet")
    assert prompts["kind"].to_list() == ["character"] * 2 + ["style"] + ["quality"] * 3
    assert json.loads((out / "prompts.json").read_text())["digest"] == manifest.inputs["prompt_set"]
    for label in LABELS:
        pngs = sorted((out / label / "images").glob("*.png"))
        assert len(pngs) == prompts.height * len(cfg.seeds)
        assert Image.open(pngs[0]).size == (64, 64)
        for name in ("grid.png", "images.parquet", "scores.parquet", "scores.json"):
            assert (out / label / name).is_file(), (label, name)
        per_prompt = pl.read_parquet(out / label / "scores.parquet")
        assert per_prompt["prompt_id"].to_list() == prompts["prompt_id"].to_list()
    for name in ("scores.parquet", "scores.json", "trend.png", "comparison.png"):
        assert (out / name).is_file(), name
    assert manifest.counts["checkpoints"] == 4 and (out / "manifest.json").is_file()
    assert calls[-1] == ("final", 12, 12) and len(calls) == 4 * 12


def test_checkpoints_share_prompts_and_seeds(evaluated) -> None:
    """Same noise for every checkpoint: the LoKr changes the pictures, and the final file
    (kohya names) gives exactly what the step-2 checkpoint (training names) gave."""
    run, *_ = evaluated
    out = run / "evaluate"
    name = "images/character-0000-s0.png"
    base, one, two, final = (pixels(out / label / name) for label in LABELS)
    assert np.abs(base - one).max() > 0 and np.abs(one - two).max() > 0
    assert np.array_equal(two, final)
    seeds = pixels(out / "base" / "images/character-0000-s1.png")
    assert np.abs(base - seeds).max() > 0


def test_scores_per_checkpoint_and_trend(evaluated) -> None:
    run, cfg, *_ = evaluated
    summaries = read_summaries(run)
    assert [s.label for s in summaries] == LABELS
    assert [s.step for s in summaries] == [0, 1, 2, 3]
    for s in summaries:
        clip, fid, kid = s.metric("clip_score"), s.metric("fid"), s.metric("kid")
        assert clip.status == "ok" and 0 <= clip.value <= 100 and clip.n == 12
        assert set(clip.detail["by_kind"]) == {"character", "style", "quality"}
        assert fid.status == "ok" and fid.value > 0 and kid.status == "ok"
        assert kid.detail["subset_size"] == 4 and kid.detail["references"] == 8
        for name in ("ccip_difference", "ccip_match"):
            m = s.metric(name)
            assert m.status == "skipped" and m.value is None and "ccip_model" in m.reason
    per_image = pl.read_parquet(run / "evaluate/base/images.parquet")
    assert per_image["clip_score"].null_count() == 0
    assert per_image["ccip_match"].null_count() == per_image.height
    table = pl.read_parquet(run / "evaluate/scores.parquet")
    assert table.height == 4 * 5 and set(table["status"]) == {"ok", "skipped"}


def test_report_for_the_ui(evaluated) -> None:
    run, *_ = evaluated
    rep = build_report(run)
    assert list(rep.grids) == LABELS
    for markdown in [*rep.grids.values(), rep.comparison, rep.trend_chart]:
        data = markdown.split("data:image/png;base64,")[1].split(")")[0]
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    assert [r["checkpoint"] for r in rep.scores] == LABELS
    assert rep.scores[0]["clip_score"] is not None and rep.scores[0]["fid"] is not None
    assert "ccip_model" in rep.scores[0]["skipped"]
    assert [r["metric"] for r in rep.trend] == ["clip_score", "fid", "kid"]
    assert set(LABELS) <= set(rep.trend[0]) and rep.trend[0]["change"] is not None
    grid = Image.open(run / "evaluate/base/grid.png")
    assert grid.size[0] > 2 * 32 and grid.size[1] > 6 * 32  # 2 seeds x 6 prompts


def test_rerun_reuses_pictures_and_rescoring_follows_the_models(evaluated, tmp_path) -> None:
    src, cfg, *_ = evaluated
    run = tmp_path / "run"
    shutil.copytree(src, run)
    picture = run / "evaluate/step-000001/images/style-0000-s1.png"
    stamp = picture.stat().st_mtime_ns
    scores_stamp = (run / "evaluate/step-000001/scores.json").stat().st_mtime_ns
    cfg2 = cfg.model_copy(update={"checkpoints": [1], "include_base": False, "clip_model": None})
    calls: list = []
    run_evaluate(cfg2, run, progress=lambda *a: calls.append(a))
    assert calls == [] and picture.stat().st_mtime_ns == stamp  # nothing sampled
    assert (run / "evaluate/step-000001/scores.json").stat().st_mtime_ns != scores_stamp
    (summary,) = read_summaries(run)  # the only checkpoint scored without CLIP
    assert summary.metric("clip_score").status == "skipped"
    assert "clip_model" in summary.metric("clip_score").reason
    run_evaluate(cfg.model_copy(update={"checkpoints": [2], "include_base": False}), run)
    # every checkpoint scored the same way, from this call or an earlier one (step 1 was
    # rescored without CLIP above)
    assert [s.label for s in read_summaries(run)] == ["base", "step-000002", "final"]
    assert calls == []


def test_a_picture_depends_on_its_prompt_and_seed_only(evaluated) -> None:
    """Sampled alone (not in a batch of 3), in merge mode instead of hooked, the picture
    of step 1 is the one the stage wrote (up to rounding)."""
    run, cfg, *_ = evaluated
    p = plan(cfg, run)
    job = next(j for j in p.jobs if j.prompt_id == "style-0000" and j.seed == 1)
    merged = cfg.model_copy(update={"apply": "merge", "batch_size": 1})
    (step1,) = list_checkpoints(run, [1])
    sampler = Sampler(p.source, merged, run, [step1])
    sampler.use(step1)
    (picture,) = sampler.sample([Job(job.prompt_id, job.prompt, job.seed)])
    stored = pixels(run / "evaluate/step-000001/images/style-0000-s1.png")
    assert np.abs(np.asarray(picture, dtype=np.int16) - stored).max() <= 2


def test_list_checkpoints(eval_run: Path, tmp_path: Path) -> None:
    assert [c.label for c in list_checkpoints(eval_run, "final")] == ["final"]
    assert [c.label for c in list_checkpoints(eval_run, "all", include_base=True)] == LABELS
    assert [(c.label, c.names) for c in list_checkpoints(eval_run, [2])] == [
        ("step-000002", "training")
    ]
    with pytest.raises(InputError, match=r"no complete checkpoint for steps \[5\].*\[1, 2\]"):
        list_checkpoints(eval_run, [5])
    run = tmp_path / "run"
    (run / "train/checkpoints/step-000004").mkdir(parents=True)  # no meta.json: not complete
    with pytest.raises(InputError, match="lokr.safetensors does not exist"):
        list_checkpoints(run, "final")
    with pytest.raises(InputError, match="nothing to evaluate"):
        list_checkpoints(run, "all")
    assert [c.label for c in list_checkpoints(run, [], include_base=True)] == ["base"]


def test_plan_checks_inputs_before_loading(eval_run: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run the tag stage first"):
        plan(tiny_config(), tmp_path)
    run = tmp_path / "run"
    (run / "tag").mkdir(parents=True)
    pl.DataFrame({"id": [1]}).write_parquet(run / "tag" / "captions.parquet")
    with pytest.raises(InputError, match=r"lacks columns \['artist'.*rebuild the tag stage"):
        plan(tiny_config(include_base=True, checkpoints=[]), run)
    shutil.copy(eval_run / "tag" / "captions.parquet", run / "tag" / "captions.parquet")
    with pytest.raises(InputError, match="no base model"):
        plan(tiny_config(include_base=True, checkpoints=[]), run)
    p = plan(tiny_config(include_base=True, checkpoints=[]), eval_run)
    assert len(p.jobs) == 6 * 2 and p.prompts.layout == "epsilon"


def test_lokr_weight_zero_and_the_base_after_a_checkpoint(evaluated) -> None:
    """Hooked at weight 0 the LoKr changes nothing; `base` after a checkpoint switches the
    hooked LoKr off."""
    run, cfg, *_ = evaluated
    p = plan(cfg, run)
    (step1,) = list_checkpoints(run, [1])
    sampler = Sampler(p.source, cfg.model_copy(update={"lokr_weight": 0.0}), run, [step1])
    stored = pixels(run / "evaluate/base/images/character-0000-s0.png")
    sampler.use(step1)
    (zero,) = sampler.sample(p.jobs[:1])
    sampler.use(Checkpoint("base", 0, None))
    (off,) = sampler.sample(p.jobs[:1])
    for picture in (zero, off):
        assert np.abs(np.asarray(picture, dtype=np.int16) - stored).max() <= 2
