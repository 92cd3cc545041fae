"""The held-out validation loss: which posts are held out (seeded, from the ids alone, never
trained on, today's order when off), their fixed batches and draws, bad settings refused
before any weight loads, and on the tiny SDXL: `val_loss` in metrics.jsonl and TensorBoard
at the validation steps, the same at every evaluation of the same weights, and the ranks'
shares adding up to the whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kohaku.errors import ConfigError
from kohaku.train import validation as val
from kohaku.train.config import LossConfig, TrainConfig, ValidationConfig
from kohaku.train.data import BucketBatches
from kohaku.train.loop import Dist, Trainer
from kohaku.train.run import check_inputs
from tests.train.rundir import write_training_run
from tests.train.test_data import make_items
from tests.train.test_loop import config

CPU = torch.device("cpu")


def splitmix_reference(seed: int, post_id: int) -> int:
    """SplitMix64 in Python integers (Steele et al. 2014), for the NumPy version."""
    mask, gamma = (1 << 64) - 1, 0x9E3779B97F4A7C15

    def finish(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    return finish((finish((seed * gamma + gamma) & mask) + post_id * gamma) & mask)


def test_keys_are_splitmix64_of_the_seed_and_id():
    ids = np.array([0, 1, 7, 123_456_789, 2**40 + 3], dtype=np.int64)
    for seed in (0, 5):
        assert val.mix(seed, ids).tolist() == [splitmix_reference(seed, int(i)) for i in ids]
    # the state starts at SplitMix64's first output from `seed` (0xE220A8397B1DCDAF for 0,
    # the published value); keys pinned, so that a change of the held-out posts is noticed
    assert val._splitmix(0) == 0xE220A8397B1DCDAF
    assert val.mix(0, np.array([0, 5])).tolist() == [5197578548964807871, 14534714757872152763]


def test_held_out_posts_depend_on_the_seed_and_the_ids_only():
    items = make_items()  # 36 posts in 4 buckets
    cfg = ValidationConfig(posts=5, seed=0)
    held = val.held_out(items, cfg)
    assert len(held) == 5 and np.array_equal(held, val.held_out(items, cfg))
    assert not np.array_equal(held, val.held_out(items, cfg.model_copy(update={"seed": 1})))
    other = np.setdiff1d(items.ids, held)[0]  # a trained post leaves: the same ones held out
    assert np.array_equal(val.held_out(val.take_rows(items, items.ids != other), cfg), held)
    assert len(val.held_out(items, ValidationConfig(fraction=0.1))) == 4  # round(3.6)
    train, kept, vset = val.split(items, cfg, batch_size=2)
    assert np.array_equal(np.sort(np.concatenate([train.ids, kept.ids])), items.ids)
    assert np.array_equal(kept.ids, held) and np.array_equal(vset.ids, held)
    rows = items.rows(train.ids)
    assert train.paths.to_list() == items.paths.gather(rows).to_list()
    assert np.array_equal(train.bucket, items.bucket[rows])
    batches = BucketBatches(train, 2, seed=3)
    trained = {i for epoch in (0, 1) for b in batches.epoch_batches(epoch) for i in b.ids}
    assert trained and not trained & set(held.tolist())


def test_off_leaves_the_items_and_the_order_as_they_were():
    items = make_items()
    train, held, vset = val.split(items, ValidationConfig(), batch_size=2)
    assert train is items and held is None and vset is None


def test_fixed_batches_hold_every_post_once_one_bucket_each():
    items = make_items()
    held = val.take_rows(items, np.isin(items.ids, val.held_out(items, ValidationConfig(posts=9))))
    batches = val.fixed_batches(held, batch_size=2)
    assert sorted(i for b in batches for i in b.ids) == held.ids.tolist()
    for b in batches:
        assert 1 <= len(b.ids) <= 2 and list(b.ids) == sorted(b.ids)
        assert {tuple(held.bucket[held.rows([i])[0]].tolist()) for i in b.ids} == {b.bucket}
    assert [b.index for b in batches] == list(range(len(batches)))
    vset = val.ValidationSet(held.ids, batches, ValidationConfig(posts=9))
    assert vset.for_rank(0, 2) + vset.for_rank(1, 2) == batches[0::2] + batches[1::2]


def test_fixed_draws_repeat_and_spread_over_the_timesteps():
    loss = LossConfig(noise_offset=0.05)
    a = val.fixed_draws((3, 10), (4, 8, 8), seed=1, timesteps=4, loss=loss, steps=1000)
    b = val.fixed_draws((3, 10), (4, 8, 8), seed=1, timesteps=4, loss=loss, steps=1000)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.timesteps, y.timesteps) and torch.equal(x.noise, y.noise)
    for k, d in enumerate(a):
        assert bool(((d.timesteps >= 250 * k) & (d.timesteps < 250 * (k + 1))).all())
        assert torch.equal(d.latent_eps, a[0].latent_eps)  # one latent sample per post
    assert not torch.equal(a[0].noise, a[1].noise)
    other = val.fixed_draws((3,), (4, 8, 8), seed=2, timesteps=1, loss=loss, steps=1000)
    assert not torch.equal(other[0].noise[0], a[0].noise[0])  # b[0] has post 3 first too


def test_bad_settings_are_one_clear_error_before_any_weight_loads(tiny_sdxl_dir, tmp_path):
    run = write_training_run(tmp_path / "run", n=4, buckets=((64, 64),))
    for bad in ({"posts": 4}, {"fraction": 0.9}):
        with pytest.raises(ConfigError, match=r"train\.validation\..* of the 4 images"):
            check_inputs(config(tiny_sdxl_dir, validation=bad), run)
    with pytest.raises(ConfigError, match="train:"):  # 3 left, no batch of 4
        check_inputs(config(tiny_sdxl_dir, batch_size=4, validation={"posts": 1}), run)
    check_inputs(config(tiny_sdxl_dir, validation={"posts": 2}), run)
    for bad, what in (({"posts": 2, "every": 0}, "every 0"), ({"posts": 0}, "posts 0"),
                      ({"posts": 1, "fraction": 0.5}, "not both"),
                      ({"fraction": 1.0}, "fraction 1.0"), ({"posts": 1, "timesteps": 0},
                                                             "timesteps 0")):  # fmt: skip
        with pytest.raises(ValidationError, match=what):
            TrainConfig.model_validate({"model": {"path": "m"}, "validation": bad})


def test_validation_loss_at_its_steps_in_metrics_and_tensorboard(tiny_sdxl_dir, tmp_path):
    """3 steps, validation every 2 (and after the last); 5 held-out posts in two buckets, 2
    fixed timesteps each. The logged loss is the mean over every held-out sample, the same
    when measured again, and two ranks' shares add up to it."""
    run = write_training_run(tmp_path / "run", n=12)
    cfg = config(tiny_sdxl_dir, max_steps=3, log_every=10,
                 validation={"posts": 5, "every": 2, "timesteps": 2})  # fmt: skip
    trainer = Trainer(cfg, run, Dist(0, 1, CPU))
    record = json.loads((run / "train/validation.json").read_text())
    assert record["posts"] == 5 and record["ids"] == trainer.validation.ids.tolist()
    assert not set(record["ids"]) & set(trainer.items.ids.tolist())
    trainer.train()
    lines = [json.loads(x) for x in (run / "train/metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], "val_loss" in x) for x in lines] == [(2, True), (3, True)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "train/tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [
        (x["step"], pytest.approx(x["val_loss"], rel=1e-6)) for x in lines]  # fmt: skip
    modes = [m.training for m in trainer.denoiser.modules()]
    again = trainer.validator.mean_loss(trainer.denoiser, trainer._autocast)
    assert again == lines[-1]["val_loss"]
    assert [m.training for m in trainer.denoiser.modules()] == modes
    shares = [val.Validator(trainer.validation, trainer.validator.source.items, run,
                            cfg.captions, cfg.loader, CPU, rank, 2)
              .loss_sum(trainer.denoiser, trainer._autocast) for rank in (0, 1)]  # fmt: skip
    assert sum(n for _, n in shares) == 5 * 2 and all(n > 0 for _, n in shares)
    assert sum(s for s, _ in shares) / 10 == pytest.approx(again, rel=1e-6)
