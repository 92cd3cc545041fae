"""The training loop on a tiny SDXL (CPU, seeded): it learns, its LoKr saves, reloads and
merges to the same outputs, a run with loader workers that is stopped, killed and resumed
gives the losses and bit-identical weights of an uninterrupted run without workers, a
2-process gloo DDP run equals a 1-process run with the same global batch, and training
from the latent cache opens no image."""

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

from kohaku.sdxl import lokr
from kohaku.train import objective
from kohaku.train.config import LoaderConfig, TrainConfig, ValidationConfig
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
            data = trainer.source[batch]  # the images, or the posteriors of the latent cache
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
    # start_new_session: a process group of its own, the trainer's and its loader workers'
    return subprocess.Popen(command(cfg, cfg_file, run), cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


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


def losses(run: Path) -> dict[int, float]:
    """Loss by step from metrics.jsonl, whose steps are logged once each, resumed or not."""
    lines = [json.loads(x) for x in (run / "train/metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == sorted({x["step"] for x in lines})
    return {x["step"]: x["loss"] for x in lines}


def test_killed_and_stopped_runs_with_workers_resume_to_bit_identical_weights(
    tiny_sdxl_dir, tmp_path
):
    """grad_accum 2, batch 1, 6 steps over two buckets (epochs cross). Uninterrupted: in
    process, no loader workers. Interrupted: 2 workers, SIGTERM to the whole process group
    (as torchrun and Prefect send it) after step 2; 2 workers again, SIGKILL after step 4;
    then resumed to the end without workers, in process. Same losses at every step (each
    logged once), same weights."""
    cfg = config(tiny_sdxl_dir, batch_size=1, grad_accum=2, max_steps=6,
                 optim={"kind": "lion8bit", "lr_unet": 1e-4, "lr_text": 1e-4},
                 loss={"noise_offset": 0.05})  # fmt: skip
    workers = cfg.model_copy(update={"loader": LoaderConfig(workers=2, prefetch=1)})
    whole = write_training_run(tmp_path / "whole", n=6)
    Trainer(cfg, whole, Dist(0, 1, torch.device("cpu"))).train()  # uninterrupted, in process

    broken = write_training_run(tmp_path / "broken", n=6)
    ckpts = broken / "train" / "checkpoints"
    proc = start(workers, broken)
    wait_for(ckpts / "step-000002" / "meta.json", proc)
    os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its workers
    assert finish(proc) == STOPPED  # it checkpoints the step it is in, then exits
    proc = start(workers, broken)
    wait_for(ckpts / "step-000005" / "meta.json", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (broken / "train" / "result.json").exists()
    resumed = Trainer(cfg, broken, Dist(0, 1, torch.device("cpu"))).train()
    assert resumed["status"] == "done" and resumed["step"] == 6

    assert losses(broken) == losses(whole) and sorted(losses(whole)) == [1, 2, 3, 4, 5, 6]
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
    on average (measured: 2e-4, 2e-7). Both hold out 2 posts (one per bucket: each rank
    validates one) and keep an EMA: the validation losses and the EMA agree alike."""
    extra = {"validation": {"posts": 2, "every": 2, "seed": 1}, "ema": {"decay": 0.5}}
    one = config(tiny_sdxl_dir, batch_size=4, max_steps=3, **extra)
    two = config(tiny_sdxl_dir, batch_size=2, max_steps=3, dist={"nproc_per_node": 2}, **extra)
    runs = {name: write_training_run(tmp_path / name, n=10) for name in ("one", "two")}
    procs = [start(one, runs["one"]), start(two, runs["two"])]
    assert [finish(p) for p in procs] == [0, 0]
    lines = [[json.loads(x) for x in (r / "train/metrics.jsonl").read_text().splitlines()]
             for r in runs.values()]  # fmt: skip
    losses = [[x["loss"] for x in run] for run in lines]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-6, abs=1e-6)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-5)
    held = [[x for x in run if "val_loss" in x] for run in lines]
    assert [x["step"] for x in held[0]] == [x["step"] for x in held[1]] == [2, 3]
    for key in ("val_loss", "val_loss_ema"):
        assert [x[key] for x in held[0]] == pytest.approx([x[key] for x in held[1]], rel=1e-5)
    for name in ("adapter", "ema"):
        a, b = (load_file(str(r / f"train/checkpoints/step-000003/{name}.safetensors"))
                for r in runs.values())  # fmt: skip
        assert a.keys() == b.keys()
        diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        assert diffs.max() < 1e-3 and diffs.mean() < 1e-6, (name, diffs.max(), diffs.mean())
    a = final_weights(runs["one"], 3)
    moved = torch.cat([a[k].flatten() for k in a if k.endswith("lokr_w1")])
    assert moved.abs().mean() > 1e-4  # the LoKr did train (w1 starts at zero)


def test_training_from_the_latent_cache(tiny_sdxl_dir, tmp_path):
    """The VAE runs once per image into the cache; training then reads posteriors from it
    (in a loader worker) and opens no image file: the images are gone while it trains,
    and its held-out post is validated from the cache too. A second run with the same VAE
    and images encodes nothing."""
    run = write_training_run(tmp_path / "run", n=4, buckets=((64, 64),))
    again = write_training_run(tmp_path / "again", n=4, buckets=((64, 64),))
    for pid in range(100, 104):  # the same pictures: copy them with their times
        src, dst = run / f"download/images/{pid}.png", again / f"download/images/{pid}.png"
        dst.write_bytes(src.read_bytes())
        os.utime(dst, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns))
    cache = tmp_path / "cache"
    cfg = config(tiny_sdxl_dir, max_steps=2, latent_cache=str(cache), loader={"workers": 1})
    held_out = cfg.model_copy(update={"validation": ValidationConfig(posts=1, every=1)})
    first = Trainer(held_out, run, Dist(0, 1, torch.device("cpu")))  # encodes the cache
    (run / "download/images").rename(run / "images-gone")
    assert first.train() == {"status": "done", "step": 2}
    assert all("val_loss" in json.loads(x) for x in (run / "train/metrics.jsonl").open())
    shards = sorted(cache.rglob("shard-*.safetensors"))
    assert shards and len(first.cache) == 4
    stamps = [p.stat().st_mtime_ns for p in shards]
    second = Trainer(cfg, again, Dist(0, 1, torch.device("cpu")))
    assert [p.stat().st_mtime_ns for p in sorted(cache.rglob("shard-*.safetensors"))] == stamps
    plain = Trainer(config(tiny_sdxl_dir, max_steps=2), again, Dist(0, 1, torch.device("cpu")))
    cached, decoded = fixed_loss(second), fixed_loss(plain)
    assert cached == pytest.approx(decoded, rel=1e-2) and cached != decoded  # fp16 posteriors
