"""The objective's pieces and the loop's policies on small tensors: min-SNR weights, the
v-prediction target, offset noise, per-sample draws, LR schedules, LoKr factors per
module class, precision modes, and the torchrun command."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from kohaku.sdxl import lokr
from kohaku.sdxl.tiny import tiny_unet
from kohaku.train import objective
from kohaku.train.config import LossConfig, TrainConfig
from kohaku.train.launch import command, parse_metrics
from kohaku.train.loop import Dist, Trainer, build_schedule
from tests.train.rundir import write_training_run

SCHED = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


class Echo(torch.nn.Module):
    """A 'UNet' that predicts a fixed tensor, to check the loss arithmetic."""

    def __init__(self, pred: torch.Tensor):
        super().__init__()
        self.pred = pred

    def forward(self, noisy, t, hidden, added_cond_kwargs):
        return SimpleNamespace(sample=self.pred.expand_as(noisy))


def losses(prediction: str, gamma: float | None, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    latents, noise = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.5)
    parts = SimpleNamespace(noise_scheduler=SCHED, unet=Echo(torch.zeros(1, 4, 2, 2)))
    draws = objective.Draws(torch.tensor([t]), noise, torch.zeros_like(noise))
    cond = objective.Conditioning(torch.zeros(1, 77, 8), torch.zeros(1, 4), torch.zeros(1, 6))
    cfg = LossConfig(prediction=prediction, min_snr_gamma=gamma)
    return objective.sample_losses(parts, latents, cond, draws, cfg), draws


@pytest.mark.parametrize("t", [10, 500, 990])
def test_min_snr_weights(t):
    snr = objective.snr(SCHED, torch.tensor([t])).item()
    plain, _ = losses("epsilon", None, t)
    assert plain.item() == pytest.approx(0.25)  # zero prediction vs noise 0.5
    weighted, _ = losses("epsilon", 5.0, t)
    assert weighted.item() == pytest.approx(0.25 * min(snr, 5.0) / snr, rel=1e-5)
    v_weighted, _ = losses("v_prediction", 5.0, t)
    v_plain, _ = losses("v_prediction", None, t)
    assert v_weighted.item() == pytest.approx(v_plain.item() * min(snr, 5.0) / (snr + 1), rel=1e-5)


def test_v_prediction_target():
    a = SCHED.alphas_cumprod[500]
    target = SCHED.get_velocity(torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.5),
                                torch.tensor([500]))  # fmt: skip
    assert target.item() == pytest.approx((a.sqrt() * 0.5 - (1 - a).sqrt()).item(), rel=1e-5)


def test_draws_are_per_sample_and_offset_noise_shifts_channels():
    gens = [objective.sample_generator(1, 0, pid) for pid in (5, 6)]
    plain = objective.draw(gens, (4, 8, 8), LossConfig(), 1000)
    again = objective.draw([objective.sample_generator(1, 0, 6)], (4, 8, 8), LossConfig(), 1000)
    assert torch.equal(plain.noise[1], again.noise[0])  # a sample's draws ignore its batch
    gens = [objective.sample_generator(1, 0, pid) for pid in (5, 6)]
    offset = objective.draw(gens, (4, 8, 8), LossConfig(noise_offset=1.0), 1000)
    shift = (offset.noise - plain.noise).mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(offset.noise - plain.noise, shift.expand_as(plain.noise), atol=1e-6)
    assert shift.abs().max() > 0.01


def train_config(model, **optim) -> TrainConfig:
    return TrainConfig.model_validate({"model": {"path": str(model)}, "optim": optim,
                                       "max_steps": 10})  # fmt: skip


def test_schedules(tmp_path):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    const = build_schedule(train_config(tmp_path, warmup_steps=4), opt, total=10)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        const.step()
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cos = build_schedule(train_config(tmp_path, warmup_steps=2, schedule="cosine"), opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        cos.step()
    assert lrs[:3] == [0.5, 1.0, 1.0] and lrs[6] == pytest.approx(0.5)
    assert lrs[-1] < 0.05 and all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_factor_per_module_class(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[unet]\ntarget_module = ["Transformer2DModel", "ResnetBlock2D"]\n'
                      'factor = 8\n[unet.factors]\nFeedForward = 2\n'
                      '[text]\ntarget_module = ["CLIPAttention"]\n')  # fmt: skip
    adapters = lokr.attach(lokr.load_preset(str(preset)), {"unet": tiny_unet()}, seed=0)
    state = adapters.networks["unet"].state_dict()
    ff = [v for k, v in state.items() if "_ff_net_2.lokr_w1" in k]
    conv = [v for k, v in state.items() if "resnets_0_conv1.lokr_w1" in k]
    assert ff and all(v.shape == (2, 2) for v in ff)
    assert conv and all(max(v.shape) <= 8 and v.shape[0] > 2 for v in conv)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(tiny_sdxl_dir, tmp_path, precision):
    run = write_training_run(tmp_path, n=2, buckets=((64, 64),))
    cfg = TrainConfig.model_validate({
        "model": {"path": str(tiny_sdxl_dir)}, "batch_size": 2, "max_steps": 2,
        "precision": precision, "gradient_checkpointing": True, "layout": "epsilon",
        "optim": {"kind": "adamw", "warmup_steps": 0}, "checkpoint_every": 100,
    })  # fmt: skip
    trainer = Trainer(cfg, run, Dist(0, 1, torch.device("cpu")))
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert trainer.train() == {"status": "done", "step": 2}
    weights = trainer.adapters.networks["unet"].state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_torchrun_command(tmp_path):
    one = TrainConfig.model_validate({"model": {"path": "m"}})
    assert command(one, tmp_path / "c.json", tmp_path)[:3] == [sys.executable, "-m",
                                                              "kohaku.train.process"]  # fmt: skip
    many = TrainConfig.model_validate({"model": {"path": "m"}, "dist": {
        "nproc_per_node": 8, "nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.5"}})  # fmt: skip
    cmd = command(many, tmp_path / "c.json", tmp_path)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.5", "--master_port=29500",
            "--nproc_per_node=8"} <= set(cmd)  # fmt: skip
    assert parse_metrics('kohaku-train {"step": 3}') == {"step": 3}
    assert parse_metrics("kohaku-train {broken") is None and parse_metrics("other") is None
