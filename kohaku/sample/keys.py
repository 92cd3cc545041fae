"""The seeded sampling key: a bijective 32-bit integer mix of the post id.

Written as plain integer arithmetic so that the order of posts depends only on the
seed (for a subset, the seed and its name) and the id: not on thread count, row order on
disk or the DuckDB version (whose own `hash()` may change). The SQL and the NumPy
versions give identical keys.
"""

from __future__ import annotations

import hashlib

import numpy as np

M32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x846CA68B  # "lowbias32" constants (C. Wellons, hash-prospector)


def mix32(x: int) -> int:
    """One round of lowbias32 on a Python int (a bijection of [0, 2**32))."""
    x &= M32
    x ^= x >> 16
    x = (x * _C1) & M32
    x ^= x >> 15
    x = (x * _C2) & M32
    return x ^ (x >> 16)


def seed_words(seed: int) -> tuple[int, int]:
    """Two 32-bit words derived from a (up to 63-bit) seed."""
    lo, hi = seed & M32, (seed >> 32) & M32
    s1 = mix32(lo ^ 0x9E3779B9)
    s2 = mix32(hi ^ mix32(s1 + 0x85EBCA6B))
    return s1, s2


def subset_seed(seed: int, name: str) -> int:
    """The seed of a subset's draw: (seed, name) hashed to 63 bits, so that subsets over
    the same posts draw independently and adding one never changes another's draw.
    SHA-256, not Python's `hash()`, which is salted per process."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sample_key(ids: np.ndarray, seed: int) -> np.ndarray:
    """Reference implementation: key = mix32(mix32(id ^ s1) ^ s2), as uint64."""
    s1, s2 = seed_words(seed)
    x = np.asarray(ids, dtype=np.uint64) & M32
    return _mix32_np(_mix32_np(x ^ np.uint64(s1)) ^ np.uint64(s2))


def _mix32_np(x: np.ndarray) -> np.ndarray:
    m = np.uint64(M32)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(_C1)) & m
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(_C2)) & m
    return x ^ (x >> np.uint64(16))


def _mulmod32_sql(x: str, c: int) -> str:
    """(x * c) mod 2**32 in BIGINT arithmetic, for x, c in [0, 2**32): c is split in
    16-bit halves so that no product exceeds 2**48."""
    lo, hi = c & 0xFFFF, c >> 16
    return f"(({x}) * {lo} + ((({x}) * {hi}) & 65535) * 65536) & {M32}"


def _mix32_steps(v: str) -> list[str]:
    """lowbias32 as a list of expressions, each over the previous value `v`."""
    return [
        f"xor({v}, {v} >> 16)",
        _mulmod32_sql(v, _C1),
        f"xor({v}, {v} >> 15)",
        _mulmod32_sql(v, _C2),
        f"xor({v}, {v} >> 16)",
    ]


def keyed_sql(relation: str, id_column: str, seed: int, key: str = "sample_key") -> str:
    """SQL selecting every column of `relation` plus `key` = sample_key(id_column).

    Each arithmetic step is one projection over the previous one (nested
    subqueries), which keeps the expression small and the query fast."""
    s1, s2 = seed_words(seed)
    steps = [f"xor({id_column} & {M32}, {s1})", *_mix32_steps("_k")]
    steps += [f"xor(_k, {s2})", *_mix32_steps("_k")]
    sql = f"SELECT *, {steps[0]} AS _k FROM {relation}"
    for step in steps[1:]:
        sql = f"SELECT * REPLACE ({step} AS _k) FROM ({sql})"
    return f"SELECT * EXCLUDE (_k), _k AS {key} FROM ({sql})"
