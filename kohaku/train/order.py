"""The train stage's batch order: bucketed, deterministic, resumable exactly, with the
sample's repeats; and the seeded generators every draw of the data side comes from.

Reads and writes nothing: `BucketBatches` takes the items `kohaku.train.data.load_items`
read (ids, buckets, repeats) and gives each rank its micro-batches (`Batch`: ids, bucket,
position, repeat index of each id); `kohaku.train.loader` builds them.

Determinism. Every random choice comes from a PCG64 bit generator seeded through a
`SeedSequence` of (domain, seed, epoch[, post id[, repeat]]), and only its raw 64-bit output
is used: a permutation is the stable argsort of raw draws, a uniform is the top 53 bits of
one. NumPy keeps PCG64's raw stream fixed for a fixed seed across versions and machines (the
PCG64 docstring's compatibility guarantee), while `Generator` methods such as `permutation`
only promise the same stream on the same build of NumPy (numpy.random compatibility policy,
NEP 19), so they are not used. The order therefore depends on nothing but the items (and
their repeats), the seed, the epoch and the global batch size: not on the manifest's row
order, the rank, the NumPy version or the machine.

Repeats. An image with `repeats = r` is r entries of its bucket, (id, 0) .. (id, r - 1),
shuffled with the others; the repeat index keys its captions and noise (only when >= 1, so
the first showing, and a run where every image is shown once, draw exactly as before
repeats existed). `_spread` then swaps entries so that no global micro-batch holds a post
twice, wherever a swap can avoid it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kohaku.errors import ConfigError

log = logging.getLogger(__name__)
ORDER_VERSION = "1"  # bump when the batch order of the same inputs changes
ORDER_DOMAIN, CAPTION_DOMAIN = 1, 2  # keep the order and caption streams apart


class Items(Protocol):
    """What the order reads of `kohaku.train.data.BucketItems`."""

    ids: np.ndarray  # int64 [N], ascending, unique
    bucket: np.ndarray  # int64 [N, 2] (width, height)
    repeats: np.ndarray | None  # int64 [N] showings per epoch; None: each once


@dataclass(frozen=True, order=True)
class DataPosition:
    """Where the data stands: `index` is the next global micro-batch within `epoch`.
    Stored in a checkpoint's sidecar (`dataclasses.asdict`, `DataPosition(**d)`)."""

    epoch: int = 0
    index: int = 0

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.index < 0:
            raise ValueError(f"DataPosition needs epoch >= 0 and index >= 0, got {self}")


@dataclass(frozen=True)
class Batch:
    """One rank's micro-batch: its ids, all from one `bucket` (width, height), the position
    of the global micro-batch it belongs to, and which showing of its post in the epoch each
    sample is (`repeat`, 0 .. repeats - 1; left empty: all 0)."""

    ids: tuple[int, ...]
    bucket: tuple[int, int]
    epoch: int
    index: int
    repeat: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.repeat:
            object.__setattr__(self, "repeat", (0,) * len(self.ids))
        if len(self.repeat) != len(self.ids):
            raise ValueError(f"Batch: {len(self.ids)} ids but {len(self.repeat)} repeats")


@dataclass(frozen=True, eq=False)
class GlobalOrder:
    """An epoch's global micro-batches: `ids[k]` (all ranks' items) from bucket `bucket[k]`,
    `repeat[k]` the showing of each; `crowded` counts those holding a post twice (`_spread`)."""

    ids: np.ndarray  # int64 [K, batch_size * world_size]
    bucket: np.ndarray  # int64 [K, 2] (width, height)
    repeat: np.ndarray  # int64 [K, batch_size * world_size]
    crowded: int = 0


class BucketBatches:
    """The deterministic, resumable order of one rank's micro-batches.

    Per epoch: each bucket's entries (an image with `repeats = r` is r of them) are shuffled
    by (seed, epoch), cut into global batches of `batch_size * world_size` (a bucket's
    incomplete remainder is left out of that epoch, see `dropped_per_epoch`), and the
    batches of all buckets are shuffled by (seed, epoch). Rank r takes items
    [r * batch_size, (r + 1) * batch_size) of every global batch, so all ranks step through
    the same buckets together. The global order depends only on the global batch size:
    1 rank with batch B sees what 2 ranks with B/2 see together. `images_per_epoch` counts
    the entries (repeats included), `batches_per_epoch` and `dropped_per_epoch` follow it."""

    def __init__(
        self, items: Items, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        _check_ranks(batch_size, world_size, rank, seed)
        self.batch_size, self.world_size, self.rank, self.seed = batch_size, world_size, rank, seed
        self.global_batch = batch_size * world_size
        self.buckets, self._groups, self._repeat = _group_by_bucket(items)
        sizes = np.array([len(g) for g in self._groups], dtype=np.int64)
        self.images, self.images_per_epoch = len(items.ids), int(sizes.sum())
        self.batches_per_epoch = int((sizes // self.global_batch).sum())
        self.dropped_per_epoch = int((sizes % self.global_batch).sum())
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"no batch possible: batch_size * world_size = {self.global_batch} exceeds "
                f"every bucket (the largest holds {int(sizes.max(initial=0))} images)"
            )
        log.info("data: %d batches of %d per epoch; %d of %d images left out (incomplete "
                 "batches of their bucket); %d images, %d showings per epoch with repeats",
                 self.batches_per_epoch, self.global_batch, self.dropped_per_epoch,
                 self.images_per_epoch, self.images, self.images_per_epoch)  # fmt: skip
        self._cache: tuple[int, GlobalOrder] | None = None

    @property
    def repeated(self) -> bool:
        """Whether some image is shown more than once per epoch."""
        return self.images_per_epoch != self.images

    def global_order(self, epoch: int) -> GlobalOrder:
        """Every rank's micro-batches of `epoch` (the last epoch asked is cached)."""
        if self._cache is None or self._cache[0] != epoch:
            order = _shuffle_epoch(self._groups, self._repeat, self.buckets, self.seed, epoch,
                                   self.global_batch)  # fmt: skip
            if order.crowded:
                log.warning("data: epoch %d: %d of %d batches hold a post twice (a post with "
                            "more repeats than its bucket has batches, or a bucket with "
                            "fewer posts than a batch)", epoch, order.crowded,
                            len(order.ids))  # fmt: skip
            self._cache = (epoch, order)
        return self._cache[1]

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """This rank's micro-batches of `epoch`, in order."""
        order = self.global_order(epoch)
        return [self._batch(order, epoch, k) for k in range(self.batches_per_epoch)]

    def iterate(
        self, start: DataPosition | None = None, stop_epoch: int | None = None
    ) -> Iterator[tuple[DataPosition, Batch]]:
        """(position, batch) from `start` (default: the very beginning) on, across epochs,
        until `stop_epoch` (exclusive; None: forever). Resume from `next_position` of the
        last batch trained on."""
        pos = self.normalize(start if start is not None else DataPosition())
        epoch, index = pos.epoch, pos.index
        while stop_epoch is None or epoch < stop_epoch:
            order = self.global_order(epoch)
            for k in range(index, self.batches_per_epoch):
                yield DataPosition(epoch, k), self._batch(order, epoch, k)
            epoch, index = epoch + 1, 0

    def next_position(self, pos: DataPosition) -> DataPosition:
        """The position after the batch at `pos` (the first of the next epoch at its end)."""
        return self.normalize(DataPosition(pos.epoch, pos.index + 1))

    def normalize(self, pos: DataPosition) -> DataPosition:
        """`pos` with an index at the epoch's end moved to the start of the next epoch."""
        if pos.index > self.batches_per_epoch:
            raise ValueError(f"{pos} is past the epoch's {self.batches_per_epoch} batches")
        if pos.index == self.batches_per_epoch:
            return DataPosition(pos.epoch + 1, 0)
        return pos

    def fingerprint(self) -> str:
        """What the global order depends on (items, their repeats, buckets, seed, global
        batch, version): store it with a checkpoint and resume only when it matches. Each
        bucket's entries list an image once per repeat, so with every image shown once the
        fingerprint is the one of before repeats existed."""
        digest = hashlib.sha256(f"{ORDER_VERSION}/{self.seed}/{self.global_batch}".encode())
        for bucket, ids in zip(self.buckets, self._groups, strict=True):
            digest.update(np.asarray(bucket, dtype=np.int64).tobytes() + ids.tobytes())
        return digest.hexdigest()[:16]

    def _batch(self, order: GlobalOrder, epoch: int, k: int) -> Batch:
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        ids = tuple(int(i) for i in order.ids[k, lo:hi])
        width, height = (int(v) for v in order.bucket[k])
        repeat = tuple(int(r) for r in order.repeat[k, lo:hi])
        return Batch(ids=ids, bucket=(width, height), epoch=epoch, index=k, repeat=repeat)


def _check_ranks(batch_size: int, world_size: int, rank: int, seed: int) -> None:
    if batch_size < 1 or world_size < 1:
        raise ConfigError(f"batch_size ({batch_size}) and world_size ({world_size}) must be >= 1")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is out of range for world_size {world_size}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")


def _group_by_bucket(
    items: Items,
) -> tuple[list[tuple[int, int]], list[np.ndarray], list[np.ndarray]]:
    """Buckets sorted by (width, height), the entries of each sorted by (id, repeat): each
    id once per repeat, and the repeat index (0 .. repeats - 1) of each entry."""
    if len(items.ids) == 0:
        return [], [], []
    ids = np.asarray(items.ids, dtype=np.int64)
    bucket = np.asarray(items.bucket, dtype=np.int64).reshape(-1, 2)
    repeat = np.zeros(len(ids), dtype=np.int64)
    if items.repeats is not None:
        counts = np.asarray(items.repeats, dtype=np.int64)
        ids, bucket = np.repeat(ids, counts), np.repeat(bucket, counts, axis=0)
        repeat = np.arange(len(ids), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    order = np.lexsort((repeat, ids, bucket[:, 1], bucket[:, 0]))
    keys, starts = np.unique(bucket[order], axis=0, return_index=True)
    groups, repeats = np.split(ids[order], starts[1:]), np.split(repeat[order], starts[1:])
    return [(int(w), int(h)) for w, h in keys], groups, repeats


def _shuffle_epoch(
    groups: list[np.ndarray], repeats: list[np.ndarray], buckets: list[tuple[int, int]],
    seed: int, epoch: int, size: int,
) -> GlobalOrder:  # fmt: skip
    rng = generator(ORDER_DOMAIN, seed, epoch)
    chunks, copies, owners, crowded = [], [], [], 0
    for b, (ids, repeat) in enumerate(zip(groups, repeats, strict=True)):
        perm = permutation(rng, len(ids))  # drawn for every bucket, full or not
        ids, repeat, k = ids[perm], repeat[perm], len(ids) // size
        crowded += _spread(ids, repeat, size, k)
        chunks.append(ids[: k * size].reshape(k, size))
        copies.append(repeat[: k * size].reshape(k, size))
        owners.append(np.full(k, b, dtype=np.int64))
    batches, owner = np.concatenate(chunks), np.concatenate(owners)
    perm = permutation(rng, len(batches))
    return GlobalOrder(ids=batches[perm], bucket=np.asarray(buckets, dtype=np.int64)[owner[perm]],
                       repeat=np.concatenate(copies)[perm], crowded=crowded)  # fmt: skip


def _spread(ids: np.ndarray, repeat: np.ndarray, size: int, k: int) -> int:
    """Swap entries of one bucket's shuffled entries (in place, ids and repeat together) so
    that none of its `k` global batches of `size` holds a post twice, wherever a swap can
    avoid it; returns the batches that still do. Nothing moves when no batch holds a post
    twice (always so when every post is shown once). Two showings in one batch would be
    two samples of one image in one step, half the variety the step should have."""
    if k == 0 or not repeat.any():
        return 0
    rows = np.sort(ids[: k * size].reshape(k, size), axis=1)
    crowded = np.flatnonzero((rows[:, 1:] == rows[:, :-1]).any(axis=1))
    return sum(not _unique_batch(ids, repeat, size, k, int(b)) for b in crowded)


def _unique_batch(ids: np.ndarray, repeat: np.ndarray, size: int, k: int, b: int) -> bool:
    """Batch `b` with each second showing of a post swapped for a partner (`_partner`);
    False when one found none. A swap brings in a post `b` lacks and hands the other batch
    a post it lacks, so no swap adds a repeat anywhere and one pass over the batches ends."""
    lo = b * size
    _, first = np.unique(ids[lo : lo + size], return_index=True)
    done = True
    for p in np.setdiff1d(np.arange(size), first) + lo:
        q = _partner(ids, size, k, int(p))
        if q is None:
            done = False
            continue
        ids[[p, q]], repeat[[p, q]] = ids[[q, p]], repeat[[q, p]]
    return done


def _partner(ids: np.ndarray, size: int, k: int, p: int) -> int | None:
    """The first entry after the batch of `p`, cyclically, whose post that batch lacks and
    that sits in a batch lacking the post at `p` (or among the left-out remainder), looked
    for a window of a few batches at a time: almost always the next batch has one."""
    n, lo, x = len(ids), p // size * size, ids[p]
    full, window = ids[: k * size].reshape(k, size), max(4 * size, 64)
    for start in range(0, n - size, window):
        pos = (lo + size + np.arange(start, min(start + window, n - size))) % n
        owner = np.where(pos < k * size, pos // size, -1)
        owners = np.unique(owner[owner >= 0])
        holding = owners[(full[owners] == x).any(axis=1)]
        ok = ~np.isin(ids[pos], ids[lo : lo + size]) & ~np.isin(owner, holding)
        if ok.any():
            return int(pos[np.argmax(ok)])
    return None


# ---------------------------------------------------------------- randomness


def generator(*entropy: int) -> np.random.Generator:
    if any(e < 0 for e in entropy):
        raise ValueError(f"seed, epoch and post id must be >= 0, got {entropy[1:]}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(entropy))))


def permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """A permutation of range(n) from raw PCG64 output (stable across NumPy versions)."""
    return np.argsort(rng.bit_generator.random_raw(n), kind="stable")


def uniform(rng: np.random.Generator, n: int) -> np.ndarray:
    """n floats in [0, 1) from raw PCG64 output (top 53 bits)."""
    return (rng.bit_generator.random_raw(n) >> np.uint64(11)) * (1.0 / 2**53)
