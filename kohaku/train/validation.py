"""The held-out validation loss: which posts are held out of training, and their loss under
the current LoKr with noise and timesteps fixed per post.

Reads the held-out posts' images under `<run>/download/images/` (or their posteriors from
the latent cache), as training reads its own (`kohaku.train.loader`). Writes
`<run>/train/validation.json` (`write_record`: the seed, the count, a digest and the ids).

Which posts. Each bucket item gets a 64-bit key, SplitMix64 (Steele, Lea and Flood 2014;
the generator Java's SplittableRandom uses) of its id and the validation seed; the `posts`
items with the smallest keys are held out. The choice depends on the seed and the ids only:
not on the manifest's row order, the rank, the world size or the NumPy version (integer
arithmetic, no NumPy random API). Training gets the other items (`split`); with validation
off it gets the very same items object, so its batch order is unchanged.

Fixed draws. Each held-out post has a generator keyed by (validation seed, post id), the
same at every evaluation: its VAE posterior sample, then per fixed timestep one uniform
draw inside that timestep's slice of [0, T) (k of n: [k T / n, (k + 1) T / n)), the noise
and the offset noise. The caption is the post's tags in their layout's order with no
dropout (or its text, per the caption kind drawn from the same seed). So the loss at step
200 and at step 400 differ by the LoKr alone, and several timesteps per post lower the
variance of the mean (a stratified sample of the timesteps).

Across ranks. The held-out posts form fixed micro-batches (one bucket each, in id order);
rank r takes batches r, r + W, ...; the sum of the per-sample losses and their count are
summed over ranks (`Trainer` all-reduces them), so the mean is over every held-out post
whatever the world size.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from itertools import groupby
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist

from kohaku.errors import ConfigError
from kohaku.stage import atomic_write_text
from kohaku.train import objective
from kohaku.train.config import CaptionConfig, LoaderConfig, LossConfig, ValidationConfig
from kohaku.train.data import Batch, BucketItems, TrainBatch
from kohaku.train.loader import BatchSource, batch_loader

RECORD = "validation.json"
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_MASK = (1 << 64) - 1


@dataclass(frozen=True, eq=False)
class ValidationSet:
    """The held-out posts (ascending ids) and their fixed micro-batches (all ranks')."""

    ids: np.ndarray
    batches: list[Batch]
    cfg: ValidationConfig

    @property
    def digest(self) -> str:
        """sha256 of the ids (int64, little-endian, ascending), first 16 hex digits."""
        return hashlib.sha256(self.ids.astype("<i8").tobytes()).hexdigest()[:16]

    def record(self) -> dict:
        return {"posts": len(self.ids), "sha256": self.digest, "seed": self.cfg.seed,
                "timesteps": self.cfg.timesteps, "every": self.cfg.every,
                "ids": self.ids.tolist()}  # fmt: skip

    def for_rank(self, rank: int, world: int) -> list[Batch]:
        return self.batches[rank::world]


def split(items: BucketItems, cfg: ValidationConfig, batch_size: int
          ) -> tuple[BucketItems, BucketItems | None, ValidationSet | None]:  # fmt: skip
    """(training items, held-out items, the validation set); with validation off, `items`
    itself and two Nones. ConfigError when the held-out posts would leave nothing to train."""
    if not cfg.enabled:
        return items, None, None
    ids = held_out(items, cfg)
    chosen = np.isin(items.ids, ids)
    held = take_rows(items, chosen)
    return take_rows(items, ~chosen), held, ValidationSet(ids, fixed_batches(held, batch_size), cfg)


def held_out(items: BucketItems, cfg: ValidationConfig) -> np.ndarray:
    """The ids of the held-out posts, ascending (smallest SplitMix64 keys of (seed, id))."""
    total, n = len(items.ids), cfg.count(len(items.ids))
    if n >= total:
        what = f"posts = {cfg.posts}" if cfg.posts is not None else f"fraction = {cfg.fraction}"
        raise ConfigError(f"train.validation.{what} holds out {n} of the {total} images, "
                          "leaving none to train on: hold out fewer")  # fmt: skip
    keys = mix(cfg.seed, items.ids)
    return np.sort(items.ids[np.argsort(keys, kind="stable")[:n]])


def mix(seed: int, ids: np.ndarray) -> np.ndarray:
    """SplitMix64's output for state splitmix(seed) + id * golden gamma, per id (uint64)."""
    state = np.uint64(_splitmix(seed))
    with np.errstate(over="ignore"):
        z = np.asarray(ids).astype(np.uint64) * np.uint64(_GOLDEN) + state
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        return z ^ (z >> np.uint64(31))


def _splitmix(x: int) -> int:
    z = (x * _GOLDEN + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return z ^ (z >> 31)


def take_rows(items: BucketItems, keep: np.ndarray) -> BucketItems:
    """The items of the rows where `keep` is True, every per-row column cut alike."""
    rows = np.flatnonzero(keep)
    cut = {}
    for f in fields(items):
        value = getattr(items, f.name)
        if isinstance(value, np.ndarray):
            cut[f.name] = value[rows]
        elif isinstance(value, pl.Series):
            cut[f.name] = value.gather(rows)
        elif isinstance(value, pl.DataFrame):
            cut[f.name] = value[rows]
    return replace(items, **cut)


def fixed_batches(items: BucketItems, batch_size: int) -> list[Batch]:
    """Micro-batches of up to `batch_size` posts of one bucket: buckets by (width, height),
    ids ascending (the last of a bucket may be smaller: every held-out post counts)."""
    bucket = np.asarray(items.bucket, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((items.ids, bucket[:, 1], bucket[:, 0]))
    batches: list[Batch] = []
    for (width, height), rows in groupby(order, key=lambda r: tuple(bucket[r].tolist())):
        ids = [int(items.ids[r]) for r in rows]
        for start in range(0, len(ids), batch_size):
            chunk = tuple(ids[start : start + batch_size])
            batches.append(Batch(chunk, (width, height), epoch=0, index=len(batches)))
    return batches


def fixed_captions(cfg: CaptionConfig) -> CaptionConfig:
    """The captions of the held-out posts: tags in order, none dropped, no empty caption."""
    return cfg.model_copy(update={"shuffle": False, "tag_dropout": 0.0, "caption_dropout": 0.0})


def write_record(vset: ValidationSet, folder: Path) -> Path:
    path = Path(folder) / RECORD
    atomic_write_text(path, json.dumps(vset.record()))
    return path


# ---------------------------------------------------------------------------- the loss


def validation_generator(seed: int, post_id: int) -> torch.Generator:
    """A held-out post's generator (apart from training's `objective.sample_generator`)."""
    return objective.keyed_generator(f"validation:{seed}:{post_id}")


def fixed_draws(ids: tuple[int, ...], shape: tuple[int, ...], seed: int, timesteps: int,
                loss: LossConfig, steps: int) -> list[objective.Draws]:  # fmt: skip
    """One `Draws` per fixed timestep, all with each post's one latent sample: timestep k
    of n lies in [k steps / n, (k + 1) steps / n)."""
    gens = [validation_generator(seed, pid) for pid in ids]
    eps = torch.stack([torch.randn(shape, generator=g) for g in gens])
    out = []
    for k in range(timesteps):
        ts, noises = [], []
        for g in gens:
            u = torch.rand((1,), generator=g, dtype=torch.float64)
            ts.append(min(steps - 1, math.floor((k + float(u)) * steps / timesteps)))
            noise = torch.randn(shape, generator=g)
            offset = torch.randn((shape[0], 1, 1), generator=g)
            noises.append(noise + loss.noise_offset * offset if loss.noise_offset else noise)
        out.append(objective.Draws(torch.tensor(ts), torch.stack(noises), eps))
    return out


class Validator:
    """This rank's share of the held-out batches and how to get their summed loss."""

    def __init__(self, vset: ValidationSet, items: BucketItems, run_dir: Path,
                 captions: CaptionConfig, loader: LoaderConfig, device: torch.device,
                 rank: int, world: int, cache=None) -> None:  # fmt: skip
        # read in this process: loader workers would start anew at every validation (a
        # fork and the items' transfer, seconds each time), for a few batches every K steps
        self.loader = loader.model_copy(update={"workers": 0})
        self.vset, self.device, self.world = vset, device, world
        self.source = BatchSource(items, run_dir, fixed_captions(captions), vset.cfg.seed, cache)
        self.batches = vset.for_rank(rank, world)

    def due(self, step: int, total: int) -> bool:
        return step % self.vset.cfg.every == 0 or step == total

    def mean_loss(self, denoiser, autocast: Callable) -> float:
        """The mean held-out loss over every rank's samples (the sum and count all-reduced
        in float64: exact counts)."""
        total, count = self.loss_sum(denoiser, autocast)
        if self.world > 1:
            t = torch.tensor([total, count], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            total, count = t.tolist()
        return total / count

    @torch.no_grad()
    def loss_sum(self, denoiser, autocast: Callable) -> tuple[float, int]:
        """(sum of the per-sample losses over every fixed timestep, their count) of this
        rank's batches, in eval mode; the modules' modes are restored afterwards."""
        total, count = 0.0, 0
        with eval_mode(denoiser):
            for batch in batch_loader(self.source, self.batches, self.loader, self.device):
                losses = self._losses(denoiser, batch, autocast)
                total, count = total + float(losses.double().sum()), count + losses.numel()
        return total, count

    def _losses(self, denoiser, batch: TrainBatch, autocast: Callable) -> torch.Tensor:
        shape = denoiser.latent_shape(batch)
        steps = denoiser.parts.noise_scheduler.config.num_train_timesteps
        draws = fixed_draws(batch.ids, shape, self.vset.cfg.seed, self.vset.cfg.timesteps,
                            denoiser.cfg.loss, steps)  # fmt: skip
        with autocast():
            latents, cond = denoiser.inputs(batch, draws[0].latent_eps.to(self.device))
            return torch.stack([objective.sample_losses(denoiser.parts, latents, cond, d,
                                                        denoiser.cfg.loss).float()
                                for d in draws])  # fmt: skip


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """`module` and its children in eval mode, each put back in its own mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)
