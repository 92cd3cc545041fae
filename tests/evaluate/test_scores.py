"""Scores from local models: the CLIP score's math, CCIP through a stand-in scorer, and
every model that is not there reported as a skipped metric (never a zero)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from kohaku.evaluate import scores as scores_mod
from kohaku.evaluate import scoring
from kohaku.evaluate.prompts import build_prompt_set
from kohaku.evaluate.run import pictures_frame, plan
from kohaku.evaluate.scores import (
    CcipScorer,
    ClipScorer,
    Unavailable,
    ccip_input,
    character_fidelity,
    load_ccip,
    load_clip,
)
from kohaku.evaluate.scoring import Scorers, choose_references, score_pictures
from tests.evaluate.conftest import captions_frame, tiny_config


def test_clip_score_is_100_times_the_clamped_cosine(tiny_clip_dir: Path) -> None:
    from transformers import CLIPModel, CLIPProcessor

    scorer = ClipScorer(tiny_clip_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
              for _ in range(3)]  # fmt: skip
    texts = ["1girl, hatsune miku", "the girl " * 40, "scenery"]  # the 2nd is truncated
    got = scorer.score(images, texts, batch_size=2)
    model = CLIPModel.from_pretrained(tiny_clip_dir, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip_dir, local_files_only=True)
    for image, text, value in zip(images, texts, got, strict=True):
        inputs = proc(text=[text], images=[image], return_tensors="pt", truncation=True,
                      max_length=77)  # fmt: skip
        with torch.no_grad():
            out = model(**inputs)
        cos = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item()
        assert value == pytest.approx(100 * max(cos, 0.0), abs=1e-4)
    assert got.shape == (3,) and (got >= 0).all()


def test_missing_models_are_unavailable_with_a_reason(tmp_path: Path, monkeypatch) -> None:
    assert load_clip(None).reason == "no CLIP model given (evaluate.clip_model)"
    assert "does not exist" in load_clip(tmp_path / "clip").reason
    (tmp_path / "empty").mkdir()
    assert "does not load" in load_clip(tmp_path / "empty").reason
    assert load_ccip(None).reason == "no CCIP model given (evaluate.ccip_model)"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "onnxruntime is not installed" in load_ccip(tmp_path / "empty").reason
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    (tmp_path / "empty" / "metrics.json").write_text(json.dumps({"threshold": 0.2}))
    reason = load_ccip(tmp_path / "empty").reason
    assert "lacks model_feat.onnx, model_metrics.onnx" in reason


def test_ccip_runs_its_onnx_files(tiny_ccip_dir: Path, tmp_path: Path) -> None:
    scorer = CcipScorer(tiny_ccip_dir, threads=1)
    red, blue = Image.new("RGB", (30, 50), "red"), Image.new("RGB", (64, 64), "blue")
    feats = scorer.features([red, blue, red])
    assert feats.shape == (3, 3)
    assert np.allclose(feats[0], ccip_input(red).mean((1, 2)), rtol=1e-3)  # float32 sums
    diff = scorer.differences(feats)
    assert diff.shape == (3, 3) and np.allclose(diff, diff.T) and diff[0, 2] == 0
    assert diff[0, 1] == pytest.approx(np.linalg.norm(feats[0] - feats[1]), rel=1e-5)
    assert scorer.threshold == 0.5 and isinstance(load_ccip(tiny_ccip_dir), CcipScorer)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ccip_dir, broken)
    (broken / "model_feat.onnx").write_bytes(b"nope")
    assert "does not load" in load_ccip(broken).reason


def test_ccip_through_the_stage_scoring(evaluated, tiny_ccip_dir: Path) -> None:
    run, cfg, *_ = evaluated
    with_ccip = cfg.model_copy(update={"ccip_model": tiny_ccip_dir, "inception": None})
    p = plan(with_ccip, run)
    scorers = Scorers.load(with_ccip, run, p.prompts)
    assert isinstance(scorers.ccip, CcipScorer)
    _, metrics = score_pictures(pictures_frame(p), run / "evaluate" / "step-000002", scorers)
    by_name = {m.name: m for m in metrics}
    assert by_name["ccip_difference"].status == "ok" and by_name["ccip_difference"].n == 4
    assert 0 <= by_name["ccip_match"].value <= 1


def test_skipped_metrics_when_no_model_is_given(evaluated) -> None:
    run, cfg, *_ = evaluated
    bare = cfg.model_copy(update={"clip_model": None, "inception": None})
    p = plan(bare, run)
    scorers = Scorers.load(bare, run, p.prompts)
    frame, metrics = score_pictures(pictures_frame(p), run / "evaluate" / "base", scorers)
    assert [(m.name, m.status, m.value) for m in metrics] == [
        (name, "skipped", None)
        for name in ("clip_score", "ccip_difference", "ccip_match", "fid", "kid")
    ]
    assert all(m.reason for m in metrics) and "evaluate.inception" in metrics[3].reason
    assert frame.select(pl.col("clip_score", "ccip_match").null_count()).row(0) == (12, 12)


def test_fid_skipped_without_reference_pictures(evaluated, tiny_extractor: Path) -> None:
    run, cfg, *_ = evaluated
    p = plan(cfg, run)
    scorers = Scorers.load(cfg.model_copy(update={"reference_images": 1}), run, p.prompts)
    metrics = scoring.fid_scores(scorers, [run / "evaluate/base/images/style-0000-s0.png"] * 3)
    assert [m.status for m in metrics] == ["skipped", "skipped"]
    assert "1 references" in metrics[0].reason


class MeanColour:
    """A stand-in CCIP: the feature is the mean colour, the difference the distance / 255."""

    threshold = 0.1

    def features(self, images) -> np.ndarray:
        return np.stack([np.asarray(im, dtype=np.float64).mean((0, 1)) for im in images])

    def differences(self, features: np.ndarray) -> np.ndarray:
        return np.linalg.norm(features[:, None] - features[None], axis=-1) / 255


def test_character_fidelity_math() -> None:
    scorer = MeanColour()
    generated = np.array([[0.0, 0, 0], [255.0, 0, 0]])
    refs = np.array([[0.0, 0, 0], [0.0, 0, 25.5], [0.0, 0, 51]])
    result = character_fidelity(scorer, generated, refs)
    assert result.difference == pytest.approx([0.1, np.mean([1, np.sqrt(1.01), np.sqrt(1.04)])])
    assert result.match.tolist() == pytest.approx([2 / 3, 0.0])


def test_ccip_scores_character_prompts_against_their_references(evaluated) -> None:
    run, cfg, *_ = evaluated
    p = plan(cfg, run)
    scorers = Scorers.load(cfg.model_copy(update={"inception": None}), run, p.prompts)
    scorers.ccip = MeanColour()
    frame, metrics = score_pictures(pictures_frame(p), run / "evaluate" / "final", scorers)
    by_name = {m.name: m for m in metrics}
    diff, match = by_name["ccip_difference"], by_name["ccip_match"]
    assert diff.status == match.status == "ok" and diff.n == 2 * 2  # 2 characters x 2 seeds
    assert diff.detail == {"characters": 2, "threshold": 0.1} and 0 <= match.value <= 1
    scored = frame.filter(pl.col("ccip_difference").is_not_null())
    assert set(scored["kind"]) == {"character"} and scored.height == 4
    assert sorted(scorers._ccip_features) == [1, 2, 5, 6]  # the references, read once
    assert diff.value == pytest.approx(scored["ccip_difference"].mean())


def test_ccip_input_is_prepared_as_imgutils_does() -> None:
    data = ccip_input(Image.new("RGB", (50, 70), (255, 0, 0)))
    assert data.shape == (3, 384, 384) and data.dtype == np.float32
    assert data[0, 0, 0] == pytest.approx((1 - 0.48145466) / 0.26862954, rel=1e-5)


def test_reference_choice_is_seeded_and_stable() -> None:
    images = pl.DataFrame({"id": list(range(1, 21)), "path": [f"{i}.png" for i in range(1, 21)]})
    first = choose_references(images, 5)["id"].to_list()
    assert first == choose_references(images.reverse(), 5)["id"].to_list()
    assert len(set(first)) == 5 and first != list(range(1, 6))
    assert choose_references(images, 0).is_empty() and choose_references(images, 50).height == 20


def test_unavailable_is_data() -> None:
    assert Unavailable("x") == Unavailable("x") and scores_mod.skipped("fid", "x").value is None
    assert build_prompt_set(captions_frame(), "epsilon", 1, 0, False).frame.height == 1
    assert tiny_config().device == "cpu"
