"""Batches built ahead of the training step, in worker processes (a torch DataLoader).

Reads what `data.load_batch` reads: the batch's images, or, with the latent cache, only the
cache (no image file is opened); writes nothing.

The order is decided in the training process: `BucketBatches.iterate` yields the `Batch`es
(ids, bucket, epoch, index) from the resume position on, the DataLoader hands each to a
worker as the key of the map-style dataset `BatchSource`, and gives the built batches back
in that order. A worker only reads, decodes and draws captions from
`caption_rng(seed, epoch, post id)`; the noise comes from `objective.sample_generator` in
the training process. Neither the worker count nor the workers' own seeds change anything:
0 workers (in the training process, between steps) and N give the same batches, bit for bit.

Images travel as uint8, channels last (as decoded: no transpose on the CPU), in page-locked
memory when training on a GPU, and `unit_pixels` converts them there. The float conversion
on one CPU core costs ~39 ms per 1024x1024 image, more than decoding it.

Workers are forked from a forkserver (a fresh process that imported torch and nothing else),
never from the trainer: Polars (the items' columns) can deadlock in a child forked from a
process that ran queries, and a worker holds only what `BatchSource` pickles (the items as
NumPy arrays and Arrow-backed Polars columns, the run dir, the caption config, the latent
cache's index), never the model. (Spawned workers would do too, but a spawned child runs the
interpreter's finalization on exit, where torch aborts a feeder thread still sharing a
prefetched batch: "terminate called without an active exception".) Workers ignore SIGTERM:
torchrun, Prefect and shells signal the whole process group, and the trainer answers
SIGTERM by finishing its step and writing a checkpoint, for which it still needs them; they
exit when the trainer closes the loader or dies. SIGTERM stays blocked while the server and
the workers start, so none dies before it ignores the signal.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from kohaku.errors import ConfigError
from kohaku.train.config import CaptionConfig, LoaderConfig
from kohaku.train.data import (
    Batch,
    BucketBatches,
    BucketItems,
    DataPosition,
    TrainBatch,
    load_batch,
)

if TYPE_CHECKING:
    from kohaku.train.latents import LatentCache

MAX_AUTO_WORKERS = 4


class BatchSource(Dataset):
    """`Batch` -> `TrainBatch`: what a worker builds. It holds no model and nothing open. A
    bad input (a missing or damaged image) comes back as the `ConfigError` itself, which
    `batch_loader` raises in the trainer: one line, as without workers, not a worker's
    traceback."""

    def __init__(self, items: BucketItems, run_dir: Path, captions: CaptionConfig, seed: int,
                 cache: LatentCache | None = None) -> None:  # fmt: skip
        self.items, self.run_dir, self.captions, self.seed = items, Path(run_dir), captions, seed
        self.cache = cache

    def __getitem__(self, batch: Batch) -> TrainBatch | ConfigError:
        cached = self.cache is not None
        try:
            data = load_batch(batch, self.items, self.run_dir, self.captions, self.seed,
                              read_images=not cached)  # fmt: skip
            return replace(data, posterior=self.cache.get(batch.ids)) if cached else data
        except ConfigError as exc:
            return exc


class BatchOrder:
    """The DataLoader's sampler: this rank's batches from `start` on, across epochs."""

    def __init__(self, batches: BucketBatches, start: DataPosition) -> None:
        self.batches, self.start = batches, start

    def __iter__(self) -> Iterator[Batch]:
        return (batch for _, batch in self.batches.iterate(self.start))


def worker_count(cfg: LoaderConfig, device: torch.device) -> int:
    """The configured count; by default min(4, this process's share of the CPU cores) on a
    GPU (torchrun's LOCAL_WORLD_SIZE processes share the machine), 0 on the CPU, where
    workers would take cores from the training itself."""
    if cfg.workers is not None:
        return cfg.workers
    if device.type != "cuda":
        return 0
    share = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(MAX_AUTO_WORKERS, share))


def batch_loader(source: BatchSource, order: Iterable[Batch], cfg: LoaderConfig,
                 device: torch.device) -> Iterator[TrainBatch]:  # fmt: skip
    """The built batches in `order` (a `BatchOrder`, or any iterable of batches); workers
    start here and stop when the iterator is exhausted or dropped (or the process ends)."""
    workers = worker_count(cfg, device)
    loader = DataLoader(
        source, batch_size=None, sampler=order, collate_fn=_as_is, num_workers=workers,
        prefetch_factor=cfg.prefetch if workers else None,
        multiprocessing_context=_forkserver() if workers else None,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=cfg.pin_memory and device.type == "cuda",
        generator=torch.Generator(),  # its seed goes to the workers' RNGs, which nothing uses
    )  # fmt: skip
    with _sigterm_blocked():
        return _raising(iter(loader))


def _raising(batches: Iterator[TrainBatch | ConfigError]) -> Iterator[TrainBatch]:
    for batch in batches:
        if isinstance(batch, ConfigError):
            raise batch
        yield batch


def unit_pixels(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1], converted on `device`."""
    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return (x.float() / 127.5 - 1.0).contiguous()


def _forkserver() -> multiprocessing.context.BaseContext:
    """Workers forked from a fresh server process that imported torch and nothing else."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch"])  # for a server not yet started (one per process)
    return ctx


def _as_is(batch: TrainBatch | ConfigError) -> TrainBatch | ConfigError:
    return batch


def _worker_init(_: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@contextmanager
def _sigterm_blocked() -> Iterator[None]:
    """SIGTERM held back (the workers inherit the mask); delivered on exit if it came."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
