"""The optional latent cache of the train stage: every post's VAE posterior, encoded once
and reused across runs.

Reads `BucketItems`, their bucket-sized images (through `loader.batch_loader`, so the
pixels are exactly the trainer's, decoded by its workers) and a VAE. Writes, under
`<cache_dir>/<key[:16]>/`, where `key` is `vae_key(vae)` (the cache version, the VAE's
config and the bytes of its weights):

- `shard-NNNNN.safetensors`: tensors `"<id>.mean"` and `"<id>.std"`, fp16 [C, h, w];
- `index.parquet`: id, bucket_w, bucket_h, shard, and the image the entry was encoded from
  (run-relative path, size, mtime_ns); an entry is reused only while all of them match;
- `cache.json`: the full key, the VAE config and counts.

Why the posterior and not a latent: the trainer samples it per sample with its own standard
normal draws keyed by (seed, epoch, post id) (`objective.to_latents`), and
`latents_from_cache` does the same on cached values, so training keeps its distribution
and stays deterministic. The fp16 rounding of the mean dominates the error (2^-11 relative).

A different VAE (weights, dtype or config) gets a folder of its own: caches never mix.
Every file is written under a temp name and renamed; a shard counts only once
`index.parquet`, rewritten after each shard, lists it. A killed run thus leaves whole
shards, which the next call reuses, and leftovers (temp files, unlisted shards), which it
removes or overwrites. One process writes a cache folder at a time (rank 0, before
training); any number of processes may read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kohaku.errors import ConfigError, InputError
from kohaku.stage import atomic_path, pid_alive
from kohaku.train.config import CaptionConfig, LoaderConfig
from kohaku.train.data import Batch, BucketItems
from kohaku.train.loader import BatchSource, batch_loader, unit_pixels

log = logging.getLogger(__name__)
CACHE_VERSION = "1"  # bump when what a cache holds for the same VAE and images changes
INDEX, META = "index.parquet", "cache.json"
IMAGE_COLUMNS = ["id", "bucket_w", "bucket_h", "path", "size", "mtime_ns"]
INDEX_SCHEMA = {"id": pl.Int64, "bucket_w": pl.Int64, "bucket_h": pl.Int64, "path": pl.String,
                "size": pl.Int64, "mtime_ns": pl.Int64, "shard": pl.Int64}  # fmt: skip


class Posterior(NamedTuple):
    """The VAE posterior of a batch (a diagonal Gaussian), float32 [B, C, h, w]."""

    mean: torch.Tensor
    std: torch.Tensor


@dataclass(frozen=True, eq=False)
class LatentIndex:
    """A cache folder and all its entries (INDEX_SCHEMA, sorted by id); `encoded` and
    `reused` count the items of the `cache_latents` call that returned it."""

    folder: Path
    key: str
    entries: pl.DataFrame
    encoded: int = 0
    reused: int = 0


# ---------------------------------------------------------------- keys


def vae_config(vae: torch.nn.Module) -> dict[str, Any]:
    """The VAE's config without `_` entries (such as the path it was loaded from)."""
    return {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}


def vae_key(vae: torch.nn.Module) -> str:
    """sha256 of the cache version, the VAE config and every weight's name, dtype, shape
    and bytes: the same weights give the same key wherever they were loaded from."""
    config = json.dumps(vae_config(vae), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{CACHE_VERSION}\n{config}".encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(f"\n{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def image_rows(items: BucketItems, run_dir: Path) -> pl.DataFrame:
    """Per item: id, bucket and its image's run-relative path, size and mtime_ns."""
    stats = []
    for rel in items.paths:
        try:
            st = (Path(run_dir) / rel).stat()
        except FileNotFoundError:
            raise InputError(f"{Path(run_dir) / rel} is missing: rerun the download and "
                             "buckets stages") from None  # fmt: skip
        stats.append((st.st_size, st.st_mtime_ns))
    size, mtime = np.asarray(stats, dtype=np.int64).reshape(-1, 2).T
    return pl.DataFrame(
        {"id": items.ids, "bucket_w": items.bucket[:, 0], "bucket_h": items.bucket[:, 1],
         "path": items.paths.cast(pl.String), "size": size, "mtime_ns": mtime},
        schema={k: INDEX_SCHEMA[k] for k in IMAGE_COLUMNS},
    )  # fmt: skip


# ---------------------------------------------------------------- writing


def cache_latents(
    items: BucketItems,
    run_dir: Path,
    vae: torch.nn.Module,
    cache_dir: Path,
    shard_size: int = 1000,
    batch_size: int = 8,
    loader: LoaderConfig | None = None,
) -> LatentIndex:
    """Encode every item not yet in `<cache_dir>/<vae_key[:16]>/` (new posts, and posts
    whose image or bucket changed) in single-bucket batches of `batch_size`, `shard_size`
    posts per new shard; reuse the rest. Nothing to encode: nothing is written. The images
    are decoded by `loader`'s workers (default: in this process)."""
    if shard_size < 1 or batch_size < 1:
        raise ConfigError(f"shard_size ({shard_size}) and batch_size ({batch_size}) must be >= 1")
    key = vae_key(vae)
    folder = Path(cache_dir) / key[:16]
    folder.mkdir(parents=True, exist_ok=True)
    _check_key(folder, key)
    _remove_stale_temps(folder)
    entries = _listed_shards_only(folder, read_index(folder))
    current = image_rows(items, Path(run_dir))
    todo = current.join(entries.select(IMAGE_COLUMNS), on=IMAGE_COLUMNS, how="anti")
    log.info("latent cache %s: %d of %d posts cached, %d to encode", folder,
             current.height - todo.height, current.height, todo.height)  # fmt: skip
    writer = _ShardWriter(folder, {"key": key, "vae_config": vae_config(vae)}, entries, shard_size)
    for rows, pixels in _decoded(items, Path(run_dir), todo, batch_size, loader, vae):
        writer.add(rows, encode(vae, pixels))
    entries = writer.close()
    return LatentIndex(folder, key, entries, todo.height, current.height - todo.height)


def encode(vae: torch.nn.Module, pixels: torch.Tensor) -> Posterior:
    """The posterior of pixels in [-1, 1] ([B, 3, H, W]), float32 on the CPU; the VAE runs
    where its weights are, in their dtype (as `objective.to_latents` runs it)."""
    device = next(vae.parameters()).device
    with torch.no_grad():
        dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
    return Posterior(dist.mean.float().cpu(), dist.std.float().cpu())


def _decoded(items: BucketItems, run_dir: Path, todo: pl.DataFrame, size: int,
             loader: LoaderConfig | None, vae: torch.nn.Module) -> Iterator[tuple]:  # fmt: skip
    """(rows, pixels in [-1, 1] on the VAE's device) of each batch to encode; the loader's
    workers start only when there is something to decode."""
    groups = list(_batches(todo, size))
    if not groups:
        return
    order = [Batch(tuple(g["id"].to_list()), (g["bucket_w"][0], g["bucket_h"][0]), 0, 0)
             for g in groups]  # fmt: skip
    device = next(vae.parameters()).device
    source = BatchSource(items, run_dir, CaptionConfig(), 0)
    stream = batch_loader(source, order, loader or LoaderConfig(workers=0), device)
    for rows, data in zip(groups, stream, strict=True):
        yield rows, unit_pixels(data.pixels, device)


def _batches(todo: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    """Single-bucket batches of the rows to encode, bucket by bucket, ids ascending."""
    ordered = todo.sort("bucket_w", "bucket_h", "id")
    for group in ordered.partition_by("bucket_w", "bucket_h", maintain_order=True):
        for start in range(0, group.height, size):
            yield group.slice(start, size)


class _ShardWriter:
    """Collects posteriors into shards of `size` posts. A full shard is written, then the
    index that lists it, then cache.json (each under a temp name, then renamed)."""

    def __init__(self, folder: Path, meta: dict, entries: pl.DataFrame, size: int) -> None:
        self.folder, self.meta, self.entries, self.size = folder, meta, entries, size
        self.shard = int(entries["shard"].max()) + 1 if entries.height else 0
        self.tensors: dict[str, torch.Tensor] = {}
        self.pending: list[dict] = []

    def add(self, rows: pl.DataFrame, post: Posterior) -> None:
        mean, std = post.mean.half(), post.std.half()
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise InputError(
                f"the VAE gave non-finite latents for posts {rows['id'].to_list()}: encode with "
                "an fp32 VAE (SDXL's VAE overflows in fp16 unless it is an fp16-fixed one)"
            )
        for i, row in enumerate(rows.iter_rows(named=True)):
            self.tensors[f"{row['id']}.mean"] = mean[i].contiguous()
            self.tensors[f"{row['id']}.std"] = std[i].contiguous()
            self.pending.append(row)
            if len(self.pending) == self.size:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        _atomic(self.folder / shard_name(self.shard), lambda tmp: save_file(self.tensors, tmp))
        new = pl.DataFrame(self.pending, schema={k: INDEX_SCHEMA[k] for k in IMAGE_COLUMNS})
        new = new.with_columns(shard=pl.lit(self.shard, pl.Int64))
        kept = self.entries.filter(~pl.col("id").is_in(new["id"].implode()))
        self.entries = pl.concat([kept, new]).sort("id")
        _atomic(self.folder / INDEX, self.entries.write_parquet)
        self._write_meta()
        self.shard, self.tensors, self.pending = self.shard + 1, {}, []

    def close(self) -> pl.DataFrame:
        self.flush()
        if not (self.folder / META).is_file():
            self._write_meta()
        return self.entries

    def _write_meta(self) -> None:
        meta = {"version": CACHE_VERSION, **self.meta, "posts": self.entries.height,
                "shards": self.entries["shard"].n_unique()}  # fmt: skip
        text = json.dumps(meta, indent=1, default=str)
        _atomic(self.folder / META, lambda tmp: tmp.write_text(text))


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


def read_index(folder: Path) -> pl.DataFrame:
    """The folder's entries (INDEX_SCHEMA, sorted by id); empty when it has no index."""
    path = Path(folder) / INDEX
    if not path.is_file():
        return pl.DataFrame(schema=INDEX_SCHEMA)
    frame = pl.read_parquet(path)
    if missing := [c for c in INDEX_SCHEMA if c not in frame.columns]:
        raise InputError(f"{path} lacks columns {missing}: remove {folder} and cache again")
    return frame.select(pl.col(c).cast(t) for c, t in INDEX_SCHEMA.items()).sort("id")


def _listed_shards_only(folder: Path, entries: pl.DataFrame) -> pl.DataFrame:
    """Entries whose shard file exists (a shard deleted by hand is encoded again)."""
    shards = entries["shard"].unique().to_list()
    present = [s for s in shards if (folder / shard_name(s)).is_file()]
    if len(present) < len(shards):
        log.warning("latent cache %s: %d shards listed but gone; their posts are encoded again",
                    folder, len(shards) - len(present))  # fmt: skip
    return entries.filter(pl.col("shard").is_in(present))


def _check_key(folder: Path, key: str) -> None:
    path = folder / META
    if path.is_file() and json.loads(path.read_text()).get("key") != key:
        raise ConfigError(f"{folder} holds the cache of another VAE whose key starts the same: "
                          "remove the folder")  # fmt: skip


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def _remove_stale_temps(folder: Path) -> None:
    """Temp files of processes that are gone (killed mid-write)."""
    for path in folder.glob(".*.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)

    return True


# ---------------------------------------------------------------- reading


class LatentCache:
    """Cached posteriors by post id, from a cache folder or the `LatentIndex` of one.
    Only the tensors asked for are read; up to `max_open` shards stay open (LRU)."""

    def __init__(self, source: Path | LatentIndex, max_open: int = 16) -> None:
        if isinstance(source, LatentIndex):
            self.folder, entries = source.folder, source.entries.sort("id")
        else:
            self.folder = Path(source)
            if not (self.folder / INDEX).is_file():
                raise InputError(f"{self.folder} is not a latent cache (no {INDEX}): run "
                                 "cache_latents first")  # fmt: skip
            entries = read_index(self.folder)
        self.ids = entries["id"].to_numpy()
        self.shards = entries["shard"].to_numpy()
        self.buckets = entries.select("bucket_w", "bucket_h").to_numpy()
        self.max_open = max_open
        self._handles: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        """Pickled for the loader's workers: the index, no open file (each opens its own)."""
        return {**self.__dict__, "_handles": OrderedDict()}

    def get(self, ids: Sequence[int]) -> Posterior:
        """Mean and std of `ids` (one bucket), float32 [B, C, h, w]; InputError for an id
        that is not cached."""
        rows = self._rows(ids)
        if len(np.unique(self.buckets[rows], axis=0)) > 1:
            raise ValueError(f"posts {list(ids)} span several buckets; a batch has one")
        means, stds = [], []
        for pid, shard in zip(self.ids[rows], self.shards[rows], strict=True):
            handle = self._handle(int(shard))
            means.append(handle.get_tensor(f"{pid}.mean"))
            stds.append(handle.get_tensor(f"{pid}.std"))
        return Posterior(torch.stack(means).float(), torch.stack(stds).float())

    def _rows(self, ids: Sequence[int]) -> np.ndarray:
        want = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(want) == 0:
            raise ValueError("no ids asked for")
        rows = np.searchsorted(self.ids, want).clip(0, max(len(self.ids) - 1, 0))
        absent = want[self.ids[rows] != want] if len(self.ids) else want
        if len(absent):
            raise InputError(
                f"{len(absent)} posts are not in the latent cache {self.folder} (first ids: "
                f"{absent[:5].tolist()}): run cache_latents on the run's items with this VAE"
            )
        return rows

    def _handle(self, shard: int) -> Any:
        if shard in self._handles:
            self._handles.move_to_end(shard)
            return self._handles[shard]
        path = self.folder / shard_name(shard)
        if not path.is_file():
            raise InputError(f"{path} is gone: run cache_latents again to re-encode its posts")
        self._handles[shard] = safe_open(str(path), framework="pt", device="cpu")
        if len(self._handles) > self.max_open:
            self._handles.popitem(last=False)
        return self._handles[shard]


def latents_from_cache(
    mean: torch.Tensor, std: torch.Tensor, eps: torch.Tensor, scaling_factor: float
) -> torch.Tensor:
    """`objective.to_latents` on a cached posterior: (mean + std * eps) * scaling_factor."""
    return (mean + std * eps.to(mean)) * scaling_factor
