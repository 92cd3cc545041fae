"""The train stage's batch order with repeats (issue 14): how long `BucketBatches` takes to
build and to order one epoch of epsilon rev2's size, with and without repeats, and how many
global batches `_spread` has to repair (and leaves with a post twice).

    .venv/bin/python bench/bench_order.py                     # 1.5M images, 20 % x3
    .venv/bin/python bench/bench_order.py --images 200000 --repeated 0.5 --batches 16 512

Synthetic items (no files): ids 0..N-1 in 30 buckets; a fraction of them shown 3 times.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl

import kohaku.train.data as data
import kohaku.train.order as order


def items(n: int, repeated: float, buckets: int, seed: int = 0) -> data.BucketItems:
    rng = np.random.default_rng(seed)
    size = np.stack([64 + 8 * rng.integers(0, buckets, n), np.full(n, 64)], 1).astype(np.int64)
    repeats = np.where(rng.random(n) < repeated, 3, 1).astype(np.int64)
    empty = pl.DataFrame({p: [[]] * n for p in data.PARTS}, schema=data._PARTS_SCHEMA)
    return data.BucketItems(ids=np.arange(n, dtype=np.int64), bucket=size, original_size=size,
                            crop=np.zeros((n, 2), np.int64), paths=pl.Series("path", [""] * n),
                            parts=empty, repeats=repeats)  # fmt: skip


def unique_rows(epoch: order.GlobalOrder) -> int:
    rows = np.sort(epoch.ids, axis=1)
    return int((rows[:, 1:] == rows[:, :-1]).any(axis=1).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1_500_000)
    ap.add_argument("--repeated", type=float, default=0.2, help="fraction shown 3 times")
    ap.add_argument("--buckets", type=int, default=30)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 512], help="global batches")
    args = ap.parse_args()
    with_repeats = items(args.images, args.repeated, args.buckets)
    once = data.BucketItems(**{**with_repeats.__dict__, "repeats": None})
    for size in args.batches:
        for name, its in (("repeats", with_repeats), ("once", once)):
            start = time.perf_counter()
            batches = data.BucketBatches(its, size)
            built = time.perf_counter()
            epoch = batches.global_order(0)
            done = time.perf_counter()
            print(
                f"global batch {size:4d} {name:7s}: {batches.images_per_epoch:,} showings, "
                f"build {built - start:.2f} s, epoch order {done - built:.2f} s, "
                f"batches with a post twice {unique_rows(epoch)} (crowded {epoch.crowded}), "
                f"{plain_shuffle(its, size)} of {len(epoch.ids):,} without _spread"
            )


def plain_shuffle(its: data.BucketItems, size: int) -> int:
    """Batches holding a post twice when the shuffled entries are cut as they fall."""
    spread, order._spread = order._spread, lambda *_: 0
    try:
        return unique_rows(data.BucketBatches(its, size).global_order(0))
    finally:
        order._spread = spread


if __name__ == "__main__":
    main()
