"""The EMA of the LoKr weights: its decay schedule and update, one clear error for a decay
outside (0, 1), and on the tiny SDXL: the average of the checkpoints' weights, saved in each
checkpoint, bit-identical after a SIGTERM and a resume, exported as `lokr-ema.safetensors`
with lokr.safetensors' names and metadata (plus its own), and in the stage manifest."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file

from kohaku.errors import user_message
from kohaku.stage import config_hash
from kohaku.train import run as stage
from kohaku.train.config import EmaConfig, TrainConfig
from kohaku.train.ema import EMA, EMA_LOKR, META_EMA, ema_decay
from kohaku.train.loop import Dist, Trainer
from tests.train.rundir import write_training_run
from tests.train.test_loop import config, losses

CPU = torch.device("cpu")


def test_decay_ramps_up_and_starts_after_start_step():
    cfg = EmaConfig(decay=0.99)
    assert [ema_decay(cfg, s) for s in (1, 2, 3)] == [0.1, 2 / 11, 3 / 12]
    assert ema_decay(cfg, 10_000) == 0.99
    assert ema_decay(EmaConfig(decay=0.99, warmup=False), 1) == 0.99
    late = EmaConfig(decay=0.99, start_step=5)
    assert [ema_decay(late, s) for s in (4, 5, 6)] == [0.0, 0.0, 0.1]


def test_update_averages_in_fp32_and_swapping_restores_the_weights():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.bfloat16))
    ema = EMA({"unet.w": w}, EmaConfig(decay=0.5, warmup=False, device="cpu"), CPU)
    assert ema.shadow["unet.w"].dtype == torch.float32
    with torch.no_grad():
        w.copy_(torch.tensor([3.0, 6.0]))
    ema.update(1)
    assert ema.shadow["unet.w"].tolist() == [2.0, 4.0]  # 0.5 * start + 0.5 * now
    with ema.swapped_in():
        assert w.tolist() == [2.0, 4.0]
    assert w.tolist() == [3.0, 6.0]
    assert ema.state({"unet.w": w, "unet.alpha": torch.ones(())})["unet.w"].tolist() == [2.0, 4.0]
    late = EMA({"unet.w": w}, EmaConfig(decay=0.5, start_step=1), CPU)
    with torch.no_grad():
        w.copy_(torch.tensor([5.0, 7.0]))
    late.update(1)  # up to start_step: a copy
    assert late.shadow["unet.w"].tolist() == [5.0, 7.0]


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, float("nan")])
def test_a_decay_outside_0_1_is_one_clear_error(decay):
    with pytest.raises(ValidationError) as err:
        TrainConfig.model_validate({"model": {"path": "m"}, "ema": {"decay": decay}})
    message = user_message(err.value)
    assert "ema.decay" in message and "between 0 and 1" in message and "\n" not in message


def test_off_by_default_and_absent_from_the_config_json():
    """A config without EMA or validation keeps the JSON form (and hash) of before them."""
    plain = TrainConfig.model_validate({"model": {"path": "m"}})
    assert "ema" not in plain.model_dump_json() and "validation" not in plain.model_dump_json()
    on = TrainConfig.model_validate({"model": {"path": "m"}, "ema": {"decay": 0.9}})
    assert config_hash(on) != config_hash(plain)
    assert TrainConfig.model_validate_json(on.model_dump_json()) == on


def stop_after(trainer: Trainer, step: int) -> None:
    """A real SIGTERM to this process once `step` steps are done (the trainer's handler
    takes it: it checkpoints that step and returns)."""
    train_step, done = trainer.train_step, [0]

    def stepped(batches):
        loss = train_step(batches)
        done[0] += 1
        if done[0] == step:
            signal.raise_signal(signal.SIGTERM)
        return loss

    trainer.train_step = stepped


def test_stopped_and_resumed_run_ends_with_bit_identical_ema(tiny_sdxl_dir, tmp_path):
    """4 steps with EMA (on the CPU) and validation. Uninterrupted vs stopped by SIGTERM
    after step 2 and resumed by a new trainer: the same losses and validation losses, and
    bit for bit the same EMA in the checkpoint and in lokr-ema.safetensors. The EMA is the
    average of the checkpoints' weights, and its file is a LoKr like lokr.safetensors."""
    cfg = config(tiny_sdxl_dir, max_steps=4, ema={"decay": 0.9, "device": "cpu"},
                 validation={"posts": 2, "every": 2})  # fmt: skip
    whole, broken = (write_training_run(tmp_path / n, n=8, buckets=((64, 64),))
                     for n in ("whole", "broken"))  # fmt: skip
    Trainer(cfg, whole, Dist(0, 1, CPU)).train()
    first = Trainer(cfg, broken, Dist(0, 1, CPU))
    stop_after(first, 2)
    assert first.train() == {"status": "stopped", "step": 2}
    assert Trainer(cfg, broken, Dist(0, 1, CPU)).train() == {"status": "done", "step": 4}

    assert losses(broken) == losses(whole)
    val = [{x["step"]: x.get("val_loss") for x in map(json.loads, (r / "train/metrics.jsonl")
            .read_text().splitlines())} for r in (whole, broken)]  # fmt: skip
    assert val[0] == val[1] and val[0][2] is not None and val[0][4] is not None
    ckpt = [load_file(str(r / "train/checkpoints/step-000004/ema.safetensors"))
            for r in (whole, broken)]  # fmt: skip
    assert ckpt[0].keys() == ckpt[1].keys() and all(torch.equal(ckpt[0][k], ckpt[1][k])
                                                    for k in ckpt[0])  # fmt: skip
    exported = [load_file(str(r / "train" / EMA_LOKR)) for r in (whole, broken)]
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    assert_the_average_of_the_checkpoints(whole, cfg.ema)
    assert_a_lokr_file_beside_the_raw_one(whole)
    manifest = stage._write_manifest(cfg, whole, {"loss": 1.0}, {}, 1.0,
                                     stage.checked_inputs(cfg, whole))  # fmt: skip
    assert manifest.outputs["lokr_ema"] == EMA_LOKR
    assert manifest.outputs["validation"] == "validation.json"
    counts = manifest.counts
    assert counts["validation_posts"] == 2 and counts["final_val_loss"] == val[0][4]


def assert_the_average_of_the_checkpoints(run, cfg: EmaConfig) -> None:
    """ema(s) = lerp(ema(s - 1), w(s), 1 - d(s)) in fp32 from the untrained start."""
    steps = [load_file(str(run / f"train/checkpoints/step-{s:06d}/adapter.safetensors"))
             for s in range(1, 5)]  # fmt: skip
    saved = load_file(str(run / "train/checkpoints/step-000004/ema.safetensors"))
    moved = [k for k in saved if k.endswith("lokr_w2")]  # w2 starts at zero
    assert moved
    for key in moved:
        avg = torch.zeros_like(steps[0][key], dtype=torch.float32)
        for s, weights in enumerate(steps, start=1):
            avg = avg.lerp(weights[key].float(), 1 - ema_decay(cfg, s))
        assert torch.equal(saved[key], avg), key
        assert not torch.equal(saved[key], steps[-1][key])


def assert_a_lokr_file_beside_the_raw_one(run) -> None:
    metas = []
    for name in ("lokr.safetensors", EMA_LOKR):
        with safe_open(str(run / "train" / name), "pt") as f:
            metas.append((set(f.keys()), f.metadata()))
    (raw_keys, raw), (ema_keys, ema) = metas
    assert ema_keys == raw_keys
    assert set(ema) - set(raw) == {META_EMA}
    assert json.loads(ema[META_EMA]) == {"decay": 0.9, "warmup": True, "start_step": 0, "step": 4}
    assert ema["ss_output_name"] == raw["ss_output_name"] + "-ema"
    result = json.loads((run / "train/result.json").read_text())
    assert result["lokr_ema"] == EMA_LOKR
