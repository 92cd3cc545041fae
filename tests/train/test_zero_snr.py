"""v-prediction on a zero-terminal-SNR schedule (arXiv 2305.08891) and the loss weightings:
the rescaled schedule ends at SNR 0 exactly; min-SNR and debiased weights match their
formulas and stay finite there, and so do the tiny UNet's losses and gradients at t = 999;
the config's checks and its unchanged JSON form; the base's schedule against `train.loss`;
one training step on a zero-terminal-SNR base."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from diffusers import DDPMScheduler
from pydantic import ValidationError
from safetensors import safe_open

from kohaku.errors import ConfigError
from kohaku.sdxl import schedule
from kohaku.sdxl.configs import SDXLConfigs
from kohaku.sdxl.model import ModelSource, save_single_file
from kohaku.sdxl.tiny import tiny_sdxl_components
from kohaku.stage import config_hash
from kohaku.train import objective
from kohaku.train.config import LossConfig, TrainConfig
from kohaku.train.loop import Dist, Trainer
from kohaku.train.run import check_inputs
from tests.train.rundir import write_training_run

SDXL = SDXLConfigs.builtin()
EPS = DDPMScheduler.from_config(SDXL.scheduler)
ZTSNR = DDPMScheduler.from_config(SDXL.with_prediction("v_prediction", True).scheduler)
STEPS = torch.tensor([0, 10, 500, 990, 998, 999])


def v_loss(**over) -> LossConfig:
    return LossConfig(prediction="v_prediction", zero_terminal_snr=True, **over)


def test_the_rescaled_schedule_ends_at_snr_zero():
    assert ZTSNR.alphas_cumprod[-1].item() == 0.0  # exactly: the last step is pure noise
    assert objective.snr(ZTSNR, torch.tensor([999])).item() == 0.0
    # the rescale keeps the first step's SNR (Lin et al., Algorithm 1)
    first = objective.snr(EPS, torch.tensor([0])).item()
    assert objective.snr(ZTSNR, torch.tensor([0])).item() == pytest.approx(first, rel=1e-4)
    assert ZTSNR.config.timestep_spacing == "trailing"
    latents, noise, t = torch.ones(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.tensor([999])
    assert torch.equal(ZTSNR.add_noise(latents, noise, t), noise)
    assert torch.equal(ZTSNR.get_velocity(latents, noise, t), -latents)  # v = -x0 there


def reference(kind: str, prediction: str, s: float, gamma: float = 5.0) -> float:
    """The weights as sd-scripts' custom_train_functions.py states them (its SNR cap of
    1000 for debiased), with SNR 0 handled for epsilon: min-SNR 1, debiased floored at 1e-3."""
    if kind == "min_snr":
        if prediction == "v_prediction":
            return min(s, gamma) / (s + 1)
        return 1.0 if s == 0 else min(s, gamma) / s
    if prediction == "v_prediction":
        return 1 / (min(s, 1000.0) + 1)
    return 1 / math.sqrt(min(max(s, 1e-3), 1000.0))


@pytest.mark.parametrize("kind", ["min_snr", "debiased"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_weights_match_their_formulas_and_are_finite_at_snr_zero(kind, prediction):
    for sched in (EPS, ZTSNR):
        s = objective.snr(sched, STEPS).float()
        got = objective.loss_weights(s, LossConfig(prediction=prediction, weighting=kind))
        assert torch.isfinite(got).all() and (got >= 0).all()
        want = [reference(kind, prediction, x) for x in s.tolist()]
        assert got.tolist() == pytest.approx(want, rel=1e-5)
    if prediction == "v_prediction":  # at t = 999 of the rescaled schedule
        last = objective.loss_weights(torch.zeros(1), v_loss(weighting=kind)).item()
        assert last == (0.0 if kind == "min_snr" else 1.0)


def test_no_weighting_and_the_old_spelling():
    assert LossConfig().weights == "min_snr"  # min_snr_gamma = 5 by default, as before
    assert LossConfig(min_snr_gamma=None).weights == "none"  # the old way to turn it off
    assert LossConfig(weighting="debiased").weights == "debiased"
    s = objective.snr(ZTSNR, STEPS).float()
    assert torch.equal(objective.loss_weights(s, v_loss(weighting="none")), torch.ones(6))


@pytest.mark.parametrize("weighting", ["min_snr", "debiased", "none"])
def test_tiny_unet_losses_and_gradients_are_finite_at_the_last_step(weighting):
    parts = tiny_sdxl_components(0)
    parts.noise_scheduler = ZTSNR
    cfg = v_loss(weighting=weighting)
    gens = [objective.sample_generator(0, 0, pid) for pid in range(3)]
    draws = objective.draw(gens, (4, 8, 8), cfg, 1000)
    draws.timesteps = torch.tensor([999, 998, 0])
    cond = objective.Conditioning(torch.randn(3, 77, 80), torch.randn(3, 32), torch.zeros(3, 6))
    latents = torch.randn(3, 4, 8, 8)
    params = list(parts.unet.parameters())[:4]
    for p in params:
        p.requires_grad_(True)
    losses = objective.sample_losses(parts, latents, cond, draws, cfg)
    assert torch.isfinite(losses).all()
    losses.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in params)
    if weighting == "min_snr":  # the last step's weight is min(0, gamma) / (0 + 1)
        assert losses[0].item() == 0.0 and losses[2].item() > 0


def test_config_checks_and_an_unchanged_json_form():
    with pytest.raises(ValidationError, match="zero_terminal_snr needs prediction"):
        LossConfig(zero_terminal_snr=True)
    with pytest.raises(ValidationError, match='weighting = "min_snr" needs min_snr_gamma'):
        LossConfig(weighting="min_snr", min_snr_gamma=None)
    # configs written before these fields keep their JSON and hash (the resume key)
    assert LossConfig().model_dump_json() == (
        '{"prediction":"epsilon","min_snr_gamma":5.0,"noise_offset":0.0}'
    )
    train = TrainConfig.model_validate({"model": {"path": "m"}})
    assert '"loss":{"prediction":"epsilon","min_snr_gamma":5.0' in train.model_dump_json()
    new = v_loss(weighting="debiased")
    assert LossConfig.model_validate_json(new.model_dump_json()) == new
    assert config_hash(new) != config_hash(LossConfig(prediction="v_prediction"))


def test_the_base_schedule_against_train_loss(tmp_path):
    """A base that says what it is must agree (one line naming the field); one that says
    nothing takes `train.loss`'s schedule."""
    parts = tiny_sdxl_components(0)
    parts.noise_scheduler = ZTSNR
    source = ModelSource(save_single_file(parts, tmp_path / "v.safetensors", torch.float32),
                         "single_file", prediction="v_prediction", zero_snr=True)  # fmt: skip
    assert schedule.schedule_source(source, v_loss()) == source
    with pytest.raises(ConfigError, match=r"v\.safetensors is a v_prediction model but train.loss"
                       r'.prediction is "epsilon": set train.loss.prediction = "v_prediction" '
                       "and train.loss.zero_terminal_snr = true$"):  # fmt: skip
        schedule.schedule_source(source, LossConfig())
    with pytest.raises(ConfigError, match="does not have a zero-terminal-SNR schedule"):
        schedule.schedule_source(replace(source, zero_snr=False), v_loss())
    silent = ModelSource(source.path, "single_file", declared=False)  # no v_pred key, no configs
    taken = schedule.schedule_source(silent, v_loss())
    assert (taken.prediction, taken.zero_snr) == ("v_prediction", True)


def test_a_ztsnr_run_trains_on_the_rescaled_schedule_and_says_so(tmp_path):
    """One optimizer step on a v-prediction zero-terminal-SNR base: the trainer's schedule
    ends at SNR 0, the loss is finite, and the LoKr file records both."""
    parts = tiny_sdxl_components(0)
    parts.noise_scheduler = ZTSNR
    base = save_single_file(parts, tmp_path / "ztsnr.safetensors", torch.float32)
    run = write_training_run(tmp_path / "run", n=2, buckets=((64, 64),))
    cfg = TrainConfig.model_validate({
        "model": {"path": str(base)}, "batch_size": 2, "max_steps": 1, "layout": "epsilon",
        "loss": {"prediction": "v_prediction", "zero_terminal_snr": True,
                 "weighting": "debiased"},
        "optim": {"kind": "adamw", "warmup_steps": 0}, "adapter": {"preset": "attn-only"},
    })  # fmt: skip
    assert check_inputs(cfg, run).zero_snr
    trainer = Trainer(cfg, run, Dist(0, 1, torch.device("cpu")))
    assert trainer.parts.noise_scheduler.alphas_cumprod[-1].item() == 0.0
    assert trainer.train() == {"status": "done", "step": 1}
    last = (run / "train" / "metrics.jsonl").read_text().splitlines()[-1]
    assert math.isfinite(json.loads(last)["loss"])
    with safe_open(str(run / "train" / "lokr.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["modelspec.prediction_type"], meta["ss_zero_terminal_snr"]) == ("v", "True")
