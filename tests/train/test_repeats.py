"""Repeats in the train stage: an image with `repeats = r` (the sample stage's ranges and
subsets) is shown r times per epoch, each showing a sample of its own (captions, noise and
timestep), spread over distinct global batches, resumable exactly; with every image shown
once the order, the draws and the resume key are those of before repeats."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from kohaku.errors import InputError
from kohaku.stage import build_stage, write_manifest
from kohaku.train import objective
from kohaku.train.data import (
    Batch,
    BucketBatches,
    CaptionConfig,
    caption_rng,
    load_batch,
    load_items,
    posts_file,
)
from kohaku.train.run import _start_over_if_changed, data_counts
from tests.train.test_data import PINNED, make_items

# 3 buckets; 12 + 2 * 5 = 22 entries in (8, 8) etc.: see `repeated`
SIZES = {(8, 8): 12, (16, 8): 9, (8, 16): 4}


def repeated(extra: dict[int, int] | None = None, sizes=SIZES):
    """`make_items(sizes)` with every third image shown 3 times, or `extra` {row: repeats}."""
    items = make_items(sizes)
    repeats = np.ones(len(items.ids), dtype=np.int64)
    for row, r in (extra or {i: 3 for i in range(0, len(items.ids), 3)}).items():
        repeats[row] = r
    return type(items)(**{**items.__dict__, "repeats": repeats})


def entries(batches: BucketBatches, epoch: int) -> list[tuple[int, int]]:
    return [s for b in batches.epoch_batches(epoch) for s in zip(b.ids, b.repeat, strict=True)]


def test_every_image_shown_once_is_the_order_of_before_bit_for_bit() -> None:
    plain, items = make_items(), make_items()
    ones = type(items)(**{**items.__dict__, "repeats": np.ones(len(items.ids), np.int64)})
    for seed, batch in ((5, 2), (1, 3), (2, 4)):
        a, b = BucketBatches(plain, batch, seed=seed), BucketBatches(ones, batch, seed=seed)
        assert a.fingerprint() == b.fingerprint() and not b.repeated
        for epoch in range(3):
            assert a.epoch_batches(epoch) == b.epoch_batches(epoch)
            assert all(set(x.repeat) == {0} for x in b.epoch_batches(epoch))
    first = BucketBatches(ones, 2, seed=5).epoch_batches(0)[:3]
    assert [(x.ids, x.bucket) for x in first] == PINNED
    assert caption_rng(3, 1, 7, 0).bit_generator.random_raw(4).tolist() == caption_rng(
        3, 1, 7).bit_generator.random_raw(4).tolist()  # fmt: skip
    assert torch.equal(torch.randn(4, generator=objective.sample_generator(3, 1, 7, 0)),
                       torch.randn(4, generator=objective.sample_generator(3, 1, 7)))  # fmt: skip


def test_an_image_with_repeats_r_is_shown_r_times_per_epoch_each_time_once() -> None:
    """Even buckets and batches of 2, so that nothing is left out: every image exactly its
    repeats."""
    items = repeated(sizes={(8, 8): 10, (16, 8): 6})  # rows 0, 3, .. 15 x3: 16 + 2 * 6
    batches = BucketBatches(items, 2, seed=1)
    assert (batches.images, batches.images_per_epoch) == (16, 16 + 2 * 6)
    assert (batches.batches_per_epoch, batches.dropped_per_epoch) == (14, 0)
    assert data_counts(batches) == {"images": 16, "images_per_epoch": 28,
                                    "batches_per_epoch": 14, "dropped_per_epoch": 0}  # fmt: skip
    want = dict(zip(items.ids.tolist(), items.repeats.tolist(), strict=True))
    for epoch in range(3):
        shown = entries(batches, epoch)
        assert len(set(shown)) == len(shown) == 28  # each (post, repeat) once
        assert Counter(i for i, _ in shown) == want
        assert all(sorted(r for j, r in shown if j == i) == list(range(n)) for i, n in want.items())
    assert entries(batches, 0) != entries(batches, 1)


@pytest.mark.parametrize("seed", range(6))
def test_no_global_batch_holds_a_post_twice_when_it_can_be_avoided(seed: int) -> None:
    """Half the posts 3 times in batches of 4: a plain shuffle would put a post twice into
    some batch in most epochs; every batch here holds distinct posts, on every rank."""
    items = repeated({i: 3 for i in range(0, 36, 2)}, sizes={(8, 8): 20, (16, 8): 16})
    ranks = [BucketBatches(items, 2, 2, r, seed=seed) for r in (0, 1)]
    for epoch in range(4):
        order = ranks[0].global_order(epoch)
        assert order.crowded == 0
        assert all(len(set(row)) == len(row) for row in order.ids.tolist())
        halves = [r.epoch_batches(epoch) for r in ranks]
        for k, (a, b) in enumerate(zip(*halves, strict=True)):
            assert list(a.ids + b.ids) == order.ids[k].tolist()
            assert list(a.repeat + b.repeat) == order.repeat[k].tolist()


def test_a_bucket_with_fewer_posts_than_a_batch_holds_repeats_and_says_so(caplog) -> None:
    items = repeated({0: 4, 1: 4}, sizes={(8, 8): 3})  # 9 entries of 3 posts, batches of 4
    batches = BucketBatches(items, 4, seed=0)
    with caplog.at_level(logging.WARNING, logger="kohaku.train.order"):
        order = batches.global_order(0)
    assert order.crowded == 2 and "2 of 2 batches hold a post twice" in caplog.text


def test_the_same_global_batch_on_any_rank_count_and_exact_resume() -> None:
    items = repeated()
    single = BucketBatches(items, 4, 1, 0, seed=9)
    halves = [BucketBatches(items, 2, 2, r, seed=9) for r in (0, 1)]
    assert single.fingerprint() == halves[1].fingerprint()
    for whole, a, b in zip(single.epoch_batches(0), *(h.epoch_batches(0) for h in halves),
                           strict=True):  # fmt: skip
        assert (whole.ids, whole.repeat) == (a.ids + b.ids, a.repeat + b.repeat)
    run = BucketBatches(items, 3, seed=4)
    k = run.batches_per_epoch
    full = list(itertools.islice(run.iterate(), 2 * k))
    for step in (1, k // 2, k - 1, k + 3):
        resumed = BucketBatches(items, 3, seed=4)  # a fresh process
        assert list(itertools.islice(resumed.iterate(full[step][0]), 2 * k - step)) == full[step:]


def test_the_fingerprint_and_the_resume_key_cover_the_repeats(tmp_path: Path) -> None:
    plain, three, four = make_items(), repeated(), repeated({0: 4})
    prints = {BucketBatches(x, 2).fingerprint() for x in (plain, three, four)}
    assert len(prints) == 3
    for name in ("buckets", "tag"):
        with build_stage(tmp_path, name) as build:
            write_manifest(build, stage_version="1", config_hash=name, inputs={}, outputs={},
                           counts={}, versions={})  # fmt: skip
    from kohaku.train.config import TrainConfig

    cfg = TrainConfig.model_validate({"model": {"path": str(tmp_path / "model")}})
    keys = []
    for items in (None, plain, three, four):
        _start_over_if_changed(cfg, tmp_path, None, items and BucketBatches(items, 2))
        keys.append((tmp_path / "train" / "resume.json").read_text())
    assert keys[0] == keys[1]  # every image once: the key of before repeats
    assert len(set(keys[1:])) == 3


def write_posts(run: Path, repeats: dict[int, int], **columns) -> Path:
    """The sample stage's posts.parquet, as `kohaku.sample.run` writes it (the part read)."""
    (run / "sample").mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame({"id": list(repeats), "subset": ["s"] * len(repeats),
                          "repeats": list(repeats.values()), **columns},
                         schema_overrides={"repeats": pl.Int32})  # fmt: skip
    frame.write_parquet(run / "sample" / "posts.parquet")
    return run / "sample" / "posts.parquet"


def test_load_items_reads_the_repeats_of_the_sample_by_id(tmp_path: Path) -> None:
    from tests.train.test_data import write_run

    write_run(tmp_path)  # ids 10..13
    manifest, captions = tmp_path / "buckets/manifest.parquet", tmp_path / "tag/captions.parquet"
    assert posts_file(tmp_path) is None and load_items(manifest, captions).repeats is None
    posts = write_posts(tmp_path, {13: 1, 99: 5, 10: 3, 12: 1, 11: 2})
    assert posts_file(tmp_path) == posts
    assert load_items(manifest, captions, posts=posts).repeats.tolist() == [3, 2, 1, 1]
    write_posts(tmp_path, {10: 1, 11: 1, 12: 1, 13: 1})
    assert load_items(manifest, captions, posts=posts).repeats is None  # as without repeats
    pl.DataFrame({"id": [10, 11, 12, 13]}).write_parquet(posts)  # a sample before repeats
    assert load_items(manifest, captions, posts=posts).repeats is None
    write_posts(tmp_path, {10: 2, 12: 1})
    with pytest.raises(InputError, match=r"2 of 4 images .* \[11, 13\].* rebuild the download"):
        load_items(manifest, captions, posts=posts)


def test_each_showing_draws_its_own_caption_and_noise(tmp_path: Path) -> None:
    """One post twice in a batch (repeat 0 and 1): two captions, two noise draws; the
    repeat-0 caption is what a run without repeats draws for it."""
    from tests.train.test_data import write_run

    write_run(tmp_path)
    items = load_items(tmp_path / "buckets/manifest.parquet", tmp_path / "tag/captions.parquet")
    cfg = CaptionConfig(tag_dropout=0.0)
    twice = load_batch(Batch((10, 10), (16, 8), 0, 0, repeat=(0, 1)), items, tmp_path, cfg, 3)
    once = load_batch(Batch((10,), (16, 8), 0, 0), items, tmp_path, cfg, 3)
    assert twice.samples() == [(10, 0), (10, 1)] and once.samples() == [(10, 0)]
    assert twice.captions[0] == once.captions[0] != twice.captions[1]
    assert torch.equal(twice.pixels[0], twice.pixels[1])
    noise = [torch.randn(8, generator=objective.sample_generator(3, 0, i, r))
             for i, r in twice.samples()]  # fmt: skip
    assert not torch.equal(noise[0], noise[1])
    assert json.dumps(twice.samples())  # plain ints


def test_the_trainer_reads_the_repeats_and_draws_each_showing_apart(tiny_sdxl_dir, tmp_path):
    """The run's sample/posts.parquet sets the epoch (4 images, one shown 3 times: 6
    showings, 3 batches of 2) and the steps; one image's two showings in one batch give
    two losses, its same showing twice the same loss."""
    from kohaku.train.loop import Dist, Trainer
    from tests.train.rundir import write_training_run
    from tests.train.test_loop import config

    run = write_training_run(tmp_path, n=4, buckets=((64, 64),))
    write_posts(run, {100: 3, 101: 1, 102: 1, 103: 1})
    cfg = config(tiny_sdxl_dir, max_steps=None, epochs=2)
    trainer = Trainer(cfg, run, Dist(0, 1, torch.device("cpu")))
    assert (trainer.batches.images_per_epoch, trainer.batches.batches_per_epoch) == (6, 3)
    assert trainer.total == 6
    shown = Counter(i for b in trainer.batches.epoch_batches(0) for i in b.ids)
    assert shown == {100: 3, 101: 1, 102: 1, 103: 1}

    def losses(repeat: tuple[int, int]) -> list[float]:
        data = trainer.source[Batch((100, 100), (64, 64), 0, 0, repeat=repeat)]
        gens = [objective.sample_generator(cfg.seed, 0, i, r) for i, r in data.samples()]
        with torch.no_grad():
            return trainer.model(data, gens).tolist()

    same, apart = losses((1, 1)), losses((0, 1))
    assert same[0] == same[1] and apart[1] == same[1] and apart[0] != apart[1]
