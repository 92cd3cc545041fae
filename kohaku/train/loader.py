"""Batches built ahead of the training step, in worker processes (a torch DataLoader).

Reads what `data.load_batch` reads: the batch's images, or, with the latent cache, only the
cache (no image file is opened); writes nothing.

The order is decided in the training process: `BucketBatches.iterate` yields the `Batch`es
(ids, bucket, epoch, index) from the resume position on, the DataLoader hands each to a
worker as the key of the map-style dataset `BatchSource`, and gives the built batches back
in that order. A worker only reads, decodes and draws captions from
`caption_rng(seed, epoch, post id, repeat)`; the noise comes from `objective.sample_generator` in
the training process. Neither the worker count nor the workers' own seeds change anything:
0 workers (in the training process, between steps) and N give the same batches, bit for bit.

Images travel as uint8, channels last (as decoded: no transpose on the CPU), in page-locked
memory when training on a GPU, and `unit_pixels` converts them there. The float conversion
on one CPU core costs ~39 ms per 1024x1024 image, more than decoding it.

Workers are forked from a forkserver (a fresh process that imported torch and nothing else),
never from the trainer: Polars (the items' columns) can deadlock in a child forked from a
process that ran queries, and a worker holds only what `BatchSource` pickles (the items as
`SharedItems`, tensors in shared memory that every worker maps; the run dir, the caption
config, the latent cache's index), never the model. (Spawned workers would do too, but a
spawned child runs the interpreter's finalization on exit, where torch aborts a feeder
thread still sharing a prefetched batch: "terminate called without an active
exception".) Workers ignore SIGTERM: torchrun, Prefect and shells signal the whole process
group, and the trainer answers SIGTERM by finishing its step and writing a checkpoint, for
which it still needs them; they exit when the trainer closes the loader or dies. SIGTERM
stays blocked while the server and the workers start, so none dies before it ignores it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

from kohaku.errors import ConfigError
from kohaku.train.config import CaptionConfig, LoaderConfig
from kohaku.train.data import PARTS, BucketItems, TrainBatch, load_batch
from kohaku.train.order import Batch, BucketBatches, DataPosition

if TYPE_CHECKING:
    from kohaku.train.latents import LatentCache

MAX_AUTO_WORKERS = 4


class BatchSource(Dataset):
    """`Batch` -> `TrainBatch`: what a worker builds. It holds no model and nothing open.
    Pickled for the workers, its items travel as `SharedItems` (made once, shared by all).
    A bad input (a missing or damaged image) comes back as the `ConfigError` itself, which
    `batch_loader` raises in the trainer: one line, as without workers, not a worker's
    traceback."""

    def __init__(self, items: BucketItems, run_dir: Path, captions: CaptionConfig, seed: int,
                 cache: LatentCache | None = None) -> None:  # fmt: skip
        self.items, self.run_dir, self.captions, self.seed = items, Path(run_dir), captions, seed
        self.cache, self._shared = cache, None

    def __getstate__(self) -> dict:
        if self._shared is None and isinstance(self.items, BucketItems):
            self._shared = SharedItems(self.items)
        return {**self.__dict__, "items": self._shared or self.items, "_shared": None}

    def __getitem__(self, batch: Batch) -> TrainBatch | ConfigError:
        cached, items = self.cache is not None, self.items
        if isinstance(items, SharedItems):
            items = items.subset(batch.ids)
        try:
            data = load_batch(batch, items, self.run_dir, self.captions, self.seed,
                              read_images=not cached)  # fmt: skip
            return replace(data, posterior=self.cache.get(batch.ids)) if cached else data
        except ConfigError as exc:
            return exc


class SharedItems:
    """`BucketItems` as torch tensors in shared memory, which pickle as handles: every
    worker maps the same pages instead of unpickling its own copy of the columns (a
    million posts' Polars columns pickle to ~600 MB, in ~4 s per worker). Paths are one
    UTF-8 buffer with offsets; each caption part is a list of codes into its vocabulary of
    distinct tags; natural-language texts (when there are any) one buffer with a null mask.
    The token budget (a tokenizer and its per-tag counts) pickles as it is.
    `subset(ids)` gives back the `BucketItems` of one batch."""

    def __init__(self, items: BucketItems) -> None:
        self.ids = _shared(items.ids)
        self.numbers = _shared(np.concatenate([items.bucket, items.original_size, items.crop], 1))
        self.paths = _Strings.of(items.paths.cast(pl.String))
        self.parts = {part: _Lists.of(items.parts[part]) for part in PARTS}
        self.keep_separator, self.budget = items.keep_separator, items.budget
        self.texts = None
        if items.texts is not None:
            missing = _shared(items.texts.is_null().to_numpy())
            self.texts = (_Strings.of(items.texts.fill_null("")), missing)

    def subset(self, ids: Iterable[int]) -> BucketItems:
        # each id once: a batch may show a post twice (repeats), the items hold it once
        rows = np.searchsorted(self.ids.numpy(), np.unique(np.asarray(list(ids), np.int64)))
        numbers = self.numbers.numpy()[rows]
        parts = {part: self.parts[part].get(rows) for part in PARTS}
        return BucketItems(
            ids=self.ids.numpy()[rows], bucket=numbers[:, 0:2], original_size=numbers[:, 2:4],
            crop=numbers[:, 4:6], paths=pl.Series("path", self.paths.get(rows), pl.String),
            parts=pl.DataFrame(parts, schema={p: pl.List(pl.String) for p in PARTS}),
            keep_separator=self.keep_separator, budget=self.budget, texts=self._texts(rows),
        )  # fmt: skip

    def _texts(self, rows: np.ndarray) -> pl.Series | None:
        if self.texts is None:
            return None
        strings, missing = self.texts
        values = strings.get(rows)
        gone = missing.numpy()[rows]
        return pl.Series("text", [None if g else v for v, g in zip(values, gone, strict=True)],
                         pl.String)  # fmt: skip


@dataclass(frozen=True)
class _Strings:
    """Strings as one UTF-8 buffer (uint8) and N + 1 offsets (int64), shared."""

    data: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def of(cls, strings: pl.Series, chunk: int = 100_000) -> _Strings:
        lengths = strings.str.len_bytes().fill_null(0).to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        text = b"".join(strings.slice(start, chunk).str.join("").item().encode()
                        for start in range(0, len(strings), chunk))  # fmt: skip
        return cls(_shared(np.frombuffer(text, dtype=np.uint8)), _shared(offsets))

    def get(self, indices: Iterable[int]) -> list[str]:
        data, offsets = self.data.numpy(), self.offsets.numpy()
        return [data[offsets[i] : offsets[i + 1]].tobytes().decode() for i in indices]


@dataclass(frozen=True)
class _Lists:
    """Lists of strings: codes (int32) into `vocab`, and N + 1 row offsets (int64)."""

    vocab: _Strings
    codes: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def of(cls, lists: pl.Series) -> _Lists:
        lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = lists.filter(lists.list.len() > 0).explode().fill_null("")
        vocab = flat.unique()
        codes = flat.cast(pl.Enum(vocab)).to_physical().cast(pl.Int32)  # index into vocab
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(_Strings.of(vocab), _shared(codes.to_numpy()), _shared(offsets))

    def get(self, rows: Iterable[int]) -> list[list[str]]:
        codes, offsets = self.codes.numpy(), self.offsets.numpy()
        return [self.vocab.get(codes[offsets[r] : offsets[r + 1]]) for r in rows]


def _shared(array: np.ndarray) -> torch.Tensor:
    """A copy of `array` in shared memory."""
    dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
    out = torch.empty(array.shape, dtype=dtype).share_memory_()
    out.numpy()[...] = array
    return out


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
