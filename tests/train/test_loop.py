"""The training loop on a tiny SDXL (CPU, seeded): it learns, its LoKr saves, reloads and
merges to the same outputs, a killed run resumes to bit-identical weights, and a
2-process gloo DDP run equals a 1-process run with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kohaku.train import lokr, objective
from kohaku.train.config import TrainConfig
from kohaku.train.data import load_batch
from kohaku.train.launch import command
from kohaku.train.loop import STOPPED, Dist, Trainer
from tests.train.rundir import write_training_run

ROOT = Path(__file__).resolve().parents[2]


def config(model: Path, **kw) -> TrainConfig:
    base = {
        "model": {"path": str(model)}, "batch_size": 2, "max_steps": 4, "layout": "epsilon",
        "optim": {"kind": "adamw", "lr_unet": 1e-3, "lr_text": 1e-3, "warmup_steps": 0},
        "checkpoint_every": 1, "log_every": 1, "keep_checkpoints": 10,
    }  # fmt: skip
    for key, value in kw.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return TrainConfig.model_validate(base)


def fixed_loss(trainer: Trainer) -> float:
    """The loss over every item with fixed draws (no randomness between calls)."""
    trainer.model.eval()
    losses = []
    with torch.no_grad():
        for batch in trainer.batches.epoch_batches(0):
            data = load_batch(batch, trainer.items, trainer.run_dir, trainer.cfg.captions, 0)
            gens = [objective.sample_generator(123, 0, pid) for pid in batch.ids]
            losses.append(trainer.model(data, gens).mean().item())
    trainer.model.train()
    return sum(losses) / len(losses)


def test_loss_goes_down_on_a_tiny_overfit_set(tiny_sdxl_dir, tmp_path):
    run = write_training_run(tmp_path, n=4, buckets=((64, 64),))
    fast = {"lr_unet": 3e-3, "lr_text": 3e-3}
    cfg = config(tiny_sdxl_dir, batch_size=4, max_steps=30, checkpoint_every=100, optim=fast,
                 loss={"min_snr_gamma": None})  # fmt: skip
    trainer = Trainer(cfg, run, Dist(0, 1, torch.device("cpu")))
    before = fixed_loss(trainer)
    assert trainer.train() == {"status": "done", "step": 30}
    after = fixed_loss(trainer)
    assert after < 0.7 * before, (before, after)
    lines = [json.loads(x) for x in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 31))
    assert (run / "train" / "lokr.safetensors").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "train" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 31))


def test_lokr_saves_reloads_and_merges_to_the_same_outputs(tiny_sdxl_dir, tmp_path):
    run = write_training_run(tmp_path, n=4, buckets=((64, 64),))
    trainer = Trainer(config(tiny_sdxl_dir, max_steps=3), run, Dist(0, 1, torch.device("cpu")))
    trainer.train()
    saved = lokr.save(trainer.adapters, tmp_path / "lokr32.safetensors", torch.float32)
    assert all(k.startswith(("lora_unet_", "lora_te1_text_model_", "lora_te2_text_model_"))
               for k in load_file(str(saved)))  # fmt: skip
    expected = fixed_loss(trainer)

    fresh = Trainer(config(tiny_sdxl_dir, max_steps=3), run, Dist(0, 1, torch.device("cpu")))
    assert fixed_loss(fresh) != pytest.approx(expected)  # untrained LoKr: other outputs
    lokr.load_into(fresh.adapters, saved)
    assert fixed_loss(fresh) == pytest.approx(expected, rel=1e-6)
    lokr.merge(fresh.adapters)
    for net in fresh.adapters.networks.values():
        net.restore()  # the LoKr hooks off: the merged base weights alone
    assert fixed_loss(fresh) == pytest.approx(expected, rel=1e-4)


def start(cfg: TrainConfig, run: Path, env: dict | None = None) -> subprocess.Popen:
    cfg_file = run / "train-config.json"
    cfg_file.write_text(cfg.model_dump_json())
    return subprocess.Popen(command(cfg, cfg_file, run), cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    """Wait for a trainer process; on failure, show what it printed."""
    code = proc.wait(timeout=timeout)
    if code not in (0, STOPPED):
        pytest.fail(f"trainer exit {code}:\n{proc.stderr.read().decode()[-4000:]}")
    return code


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def final_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(
        str(run / "train" / "checkpoints" / f"step-{step:06d}" / "adapter.safetensors")
    )


def test_killed_and_stopped_runs_resume_to_bit_identical_weights(tiny_sdxl_dir, tmp_path):
    """grad_accum 4, batch 1, 6 steps over two buckets (epochs cross); the second run is
    stopped by SIGTERM after step 2, killed with SIGKILL after step 4, resumed twice."""
    cfg = config(tiny_sdxl_dir, batch_size=1, grad_accum=4, max_steps=6,
                 optim={"kind": "lion8bit", "lr_unet": 1e-4, "lr_text": 1e-4},
                 loss={"noise_offset": 0.05})  # fmt: skip
    whole = write_training_run(tmp_path / "whole", n=6)
    Trainer(cfg, whole, Dist(0, 1, torch.device("cpu"))).train()  # uninterrupted, in process

    broken = write_training_run(tmp_path / "broken", n=6)
    ckpts = broken / "train" / "checkpoints"
    proc = start(cfg, broken)
    wait_for(ckpts / "step-000002" / "meta.json", proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == STOPPED  # it checkpoints the step it is in, then exits
    proc = start(cfg, broken)
    wait_for(ckpts / "step-000005" / "meta.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "train" / "result.json").exists()
    assert finish(start(cfg, broken)) == 0

    a, b = final_weights(whole, 6), final_weights(broken, 6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    exported = [load_file(str(r / "train/lokr.safetensors")) for r in (whole, broken)]
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    assert len(list(ckpts.glob("step-*"))) <= 10


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tiny_sdxl_dir, tmp_path):
    """Global batch 4: 1 process x 4 vs 2 gloo processes x 2, AdamW at lr 1e-3, 3 steps.
    The gradient sums run in another order (float rounding, ~1e-9), and Adam divides by
    the gradient's own size, so where a gradient is ~0 that noise can move a weight by up
    to one step. Tolerances: the first logged global loss (no Adam step yet) agrees to 1e-6,
    the later ones carry that noise: 1e-5 (measured 1.5e-6 at step 3 since the VAE encodes one
    image at a time); weights by less than one Adam step (lr = 1e-3) everywhere and by 1e-6
    on average (measured: 2e-4, 2e-7)."""
    one = config(tiny_sdxl_dir, batch_size=4, max_steps=3)
    two = config(tiny_sdxl_dir, batch_size=2, max_steps=3, dist={"nproc_per_node": 2})
    runs = {name: write_training_run(tmp_path / name, n=8) for name in ("one", "two")}
    procs = [start(one, runs["one"]), start(two, runs["two"])]
    assert [finish(p) for p in procs] == [0, 0]
    losses = [[json.loads(x)["loss"] for x in (r / "train/metrics.jsonl").read_text().splitlines()]
              for r in runs.values()]  # fmt: skip
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-6, abs=1e-6)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-5)
    a, b = final_weights(runs["one"], 3), final_weights(runs["two"], 3)
    assert a.keys() == b.keys()
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diffs.max() < 1e-3 and diffs.mean() < 1e-6, (diffs.max(), diffs.mean())
    moved = torch.cat([a[k].flatten() for k in a if k.endswith("lokr_w1")])
    assert moved.abs().mean() > 1e-4  # the LoKr did train (w1 starts at zero)


def test_training_from_the_latent_cache(tiny_sdxl_dir, tmp_path):
    """The VAE runs once per image into the cache; training then reads posteriors from it,
    and a second run with the same VAE and images encodes nothing."""
    run = write_training_run(tmp_path / "run", n=4, buckets=((64, 64),))
    cache = tmp_path / "cache"
    cfg = config(tiny_sdxl_dir, max_steps=2, latent_cache=str(cache))
    first = Trainer(cfg, run, Dist(0, 1, torch.device("cpu")))
    assert first.train() == {"status": "done", "step": 2}
    shards = sorted(cache.rglob("shard-*.safetensors"))
    assert shards and len(first.cache) == 4
    stamps = [p.stat().st_mtime_ns for p in shards]
    again = write_training_run(tmp_path / "again", n=4, buckets=((64, 64),))
    for pid in range(100, 104):  # the same pictures: copy them with their times
        src, dst = run / f"download/images/{pid}.png", again / f"download/images/{pid}.png"
        dst.write_bytes(src.read_bytes())
        os.utime(dst, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns))
    second = Trainer(cfg, again, Dist(0, 1, torch.device("cpu")))
    assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("shard-*.safetensors"))] == stamps
    plain = Trainer(config(tiny_sdxl_dir, max_steps=2), again, Dist(0, 1, torch.device("cpu")))
    assert fixed_loss(second) == pytest.approx(fixed_loss(plain), rel=1e-2)  # fp16 posteriors
