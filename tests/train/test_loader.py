"""The batch loader: worker processes build exactly the batches the training process would,
in the same order; what travels to the workers is small and holds nothing open; the
worker count follows the config and the device; and changing it never restarts a run."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import polars as pl
import pytest
import torch

from kohaku.errors import InputError
from kohaku.sdxl.tiny import tiny_vae
from kohaku.train.config import LoaderConfig, TrainConfig
from kohaku.train.data import (
    PARTS,
    Batch,
    BucketBatches,
    BucketItems,
    CaptionConfig,
    DataPosition,
    load_batch,
    load_items,
)
from kohaku.train.latents import LatentCache, cache_latents
from kohaku.train.loader import (
    BatchOrder,
    BatchSource,
    SharedItems,
    batch_loader,
    worker_count,
)
from kohaku.train.run import _start_over_if_changed
from tests.train.rundir import write_training_run

CPU = torch.device("cpu")


def same(a, b) -> bool:
    """Two TrainBatches equal bit for bit."""
    tensors = ("pixels", "original_size", "crop_top_left", "target_size")
    return (a.ids, a.epoch, a.index, a.captions) == (b.ids, b.epoch, b.index, b.captions) and all(
        torch.equal(getattr(a, t), getattr(b, t)) for t in tensors
    )


def test_two_workers_build_the_batches_of_the_training_process_in_its_order(tmp_path):
    """From a resume position in epoch 0 across three epoch boundaries (2 batches of 2 an
    epoch, one per bucket)."""
    run = write_training_run(tmp_path, n=6)
    items = load_items(run / "buckets/manifest.parquet", run / "tag/captions.parquet")
    batches = BucketBatches(items, batch_size=2, seed=3)
    source = BatchSource(items, run, CaptionConfig(tag_dropout=0.3), seed=3)
    start = DataPosition(0, 1)
    order = [b for _, (_, b) in zip(range(7), batches.iterate(start), strict=False)]
    expected = [load_batch(b, items, run, CaptionConfig(tag_dropout=0.3), 3) for b in order]
    assert [(b.epoch, b.index) for b in order] == [(0, 1), (1, 0), (1, 1), (2, 0), (2, 1),
                                                   (3, 0), (3, 1)]  # fmt: skip
    for workers in (0, 2):
        stream = batch_loader(source, BatchOrder(batches, start), LoaderConfig(workers=workers,
                              prefetch=1), CPU)  # fmt: skip
        got = [next(stream) for _ in range(7)]
        del stream  # stops the workers
        assert all(same(a, b) for a, b in zip(got, expected, strict=True)), workers


def test_what_workers_get_is_small_and_holds_nothing_open(tmp_path):
    """Sent as multiprocessing sends it, the source is a few kB: the items as handles to
    shared memory, the latent cache's index without its open shard files; it builds the
    same batch on the other side."""
    run = write_training_run(tmp_path / "run", n=4, buckets=((64, 64),))
    items = load_items(run / "buckets/manifest.parquet", run / "tag/captions.parquet")
    index = cache_latents(items, run, tiny_vae().eval(), tmp_path / "cache")
    cache = LatentCache(index)
    source = BatchSource(items, run, CaptionConfig(), 0, cache)
    batch = BucketBatches(items, 2).epoch_batches(0)[0]
    built = source[batch]  # opens a shard in this process
    assert cache._handles and built.pixels is None and built.posterior.mean.shape[0] == 2
    sent = ForkingPickler.dumps(source)
    assert len(sent) < 20_000, len(sent)
    copy = pickle.loads(sent)
    assert isinstance(copy.items, SharedItems) and not copy.cache._handles
    again = copy[batch]
    assert torch.equal(again.posterior.mean, built.posterior.mean)
    assert again.captions == built.captions and again.ids == built.ids


def test_shared_items_give_back_every_row():
    items = BucketItems(
        ids=np.array([3, 5, 9]), bucket=np.array([[64, 32], [32, 64], [64, 32]]),
        original_size=np.array([[640, 320], [300, 600], [128, 64]]),
        crop=np.array([[1, 0], [0, 2], [0, 0]]),
        paths=pl.Series("path", ["a/é.webp", "b/1.png", "c/ü/2.jpg"]),
        parts=pl.DataFrame({"head": [["1girl"], [], ["ñ"]], "body": [["x", "y"], [], ["x"]],
                            "tail": [[], ["z"], ["masterpiece", "x"]]},
                           schema={p: pl.List(pl.String) for p in PARTS}),
        keep_separator="|||",
    )  # fmt: skip
    shared = SharedItems(items)
    for ids in ([9, 3], [5], [3, 5, 9]):
        got, rows = shared.subset(ids), items.rows(sorted(ids))
        assert got.ids.tolist() == sorted(ids) and got.keep_separator == "|||"
        assert got.paths.to_list() == items.paths.gather(rows).to_list()
        assert got.parts.rows() == items.parts[rows].rows()
        for column in ("bucket", "original_size", "crop"):
            assert np.array_equal(getattr(got, column), getattr(items, column)[rows])


def test_a_batch_showing_a_post_twice_builds_from_the_shared_items(tmp_path):
    """Repeats: a post's two showings in one batch (where its bucket leaves no other
    choice) travel to a worker as one row and come back as two samples, as in the trainer."""
    run = write_training_run(tmp_path, n=4, buckets=((64, 64),))
    items = load_items(run / "buckets/manifest.parquet", run / "tag/captions.parquet")
    cfg = CaptionConfig(tag_dropout=0.3)
    worker = pickle.loads(ForkingPickler.dumps(BatchSource(items, run, cfg, 5)))
    assert isinstance(worker.items, SharedItems)
    batch = Batch((101, 100, 101), (64, 64), 1, 0, repeat=(1, 0, 0))
    built, expected = worker[batch], load_batch(batch, items, run, cfg, 5)
    assert same(built, expected) and built.samples() == [(101, 1), (100, 0), (101, 0)]
    assert built.captions[0] != built.captions[2] and torch.equal(*built.pixels[[0, 2]])


def test_a_bad_image_is_a_one_line_input_error_at_its_batch(tmp_path):
    """A worker sends the error back as its batch (pickled, no traceback text), and the
    trainer's side raises it when it reaches that batch, as without workers."""
    run = write_training_run(tmp_path, n=4, buckets=((64, 64),))
    items = load_items(run / "buckets/manifest.parquet", run / "tag/captions.parquet")
    batches = BucketBatches(items, batch_size=2)
    source = BatchSource(items, run, CaptionConfig(), 0)
    first, second = batches.epoch_batches(0)
    (run / "download/images" / f"{second.ids[0]}.png").unlink()
    sent = pickle.loads(pickle.dumps(source[second]))
    assert isinstance(sent, InputError) and "is missing" in str(sent)
    assert "\n" not in str(sent)
    stream = batch_loader(source, [first, second], LoaderConfig(workers=0), CPU)
    assert next(stream).ids == first.ids
    with pytest.raises(InputError, match=rf"{second.ids[0]}.png is missing: rerun the"):
        next(stream)


def test_worker_count_follows_config_and_device(monkeypatch):
    cuda = torch.device("cuda", 0)
    assert worker_count(LoaderConfig(workers=3), CPU) == 3
    assert worker_count(LoaderConfig(workers=0), cuda) == 0
    assert worker_count(LoaderConfig(), CPU) == 0  # workers would take the trainer's cores
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    assert worker_count(LoaderConfig(), cuda) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPU processes share 16 cores
    assert worker_count(LoaderConfig(), cuda) == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1})
    assert worker_count(LoaderConfig(), cuda) == 1


def test_changing_the_loader_resumes_the_run_instead_of_starting_over(tmp_path):
    run = write_training_run(tmp_path, n=2)
    base = {"model": {"path": str(tmp_path)}}
    _start_over_if_changed(TrainConfig.model_validate(base), run)
    (run / "train" / "checkpoints").mkdir()
    loader = {"workers": 3, "prefetch": 4, "pin_memory": False}
    _start_over_if_changed(TrainConfig.model_validate({**base, "loader": loader}), run)
    assert (run / "train" / "checkpoints").is_dir()
    _start_over_if_changed(TrainConfig.model_validate({**base, "seed": 1}), run)  # a result changes
    assert not (run / "train" / "checkpoints").exists()
    assert (run / "train.superseded" / "checkpoints").is_dir()


def test_loader_config_is_strict():
    with pytest.raises(ValueError):
        LoaderConfig(workers=-1)
    with pytest.raises(ValueError):
        LoaderConfig(prefetch=0)
    with pytest.raises(ValueError):
        LoaderConfig(threads=2)
