"""The training loop: LoKr on SDXL over the bucket manifest, data parallel, resumable
exactly.

Reads `<run>/buckets/manifest.parquet`, `<run>/tag/captions.parquet`, the base model and
the newest checkpoint in `<run>/train/checkpoints/`. Writes checkpoints there (every
`checkpoint_every` steps and on SIGTERM), `<run>/train/metrics.jsonl` (rank 0; `val_loss`
on the lines of the steps that measured it), `<run>/train/validation.json` (the held-out
posts, with `train.validation`) and, at the end, `<run>/train/lokr.safetensors` (kohya
names), `<run>/train/lokr-ema.safetensors` (the EMA's, with `train.ema`) and
`<run>/train/result.json`.
Run it under torchrun for several processes (`kohaku.train.process`), or directly for one.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from kohaku.sdxl import lokr
from kohaku.sdxl.embeddings import read_embeddings, restore_embeddings
from kohaku.sdxl.model import (
    check_model,
    checkpoint_activations,
    free_unused_vae,
    load_sdxl,
    vae_dtype_for,
)
from kohaku.sdxl.schedule import schedule_source
from kohaku.train import checkpoint as ckpt
from kohaku.train import objective
from kohaku.train import validation as val
from kohaku.train.config import TrainConfig, check_bitsandbytes
from kohaku.train.data import (
    BucketBatches,
    DataPosition,
    TrainBatch,
    load_items,
    posts_file,
    with_budget,
)
from kohaku.train.ema import EMA, EMA_LOKR, META_EMA, trainable
from kohaku.train.latents import LatentCache, cache_latents, latents_from_cache, vae_key
from kohaku.train.loader import BatchOrder, BatchSource, batch_loader, unit_pixels
from kohaku.train.metrics import MetricLog
from kohaku.train.tokens import token_stats

STOPPED = 75  # exit code after a SIGTERM: checkpoint written, run again to resume
# result.json's caption figures (summed over ranks), in `caption_tally`'s order
CAPTION_COUNTS = ("captions_cut", "captions_drawn", "captions_text", "captions_both",
                  "captions_text_fallback")  # fmt: skip
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_dist() -> Dist:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(rank, world, device)


class Denoiser(torch.nn.Module):
    """Everything one step runs, as one module (so DDP sees the LoKr parameters)."""

    def __init__(self, parts, adapters: lokr.Adapters, cfg: TrainConfig):
        super().__init__()
        self.parts, self.cfg = parts, cfg
        self.unet, self.vae = parts.unet, parts.vae
        self.text_encoder, self.text_encoder_2 = parts.text_encoder, parts.text_encoder_2
        self.networks = torch.nn.ModuleDict(adapters.networks)

    def forward(self, batch: TrainBatch, gens: list[torch.Generator]) -> torch.Tensor:
        device = next(self.unet.parameters()).device
        draws = objective.draw(gens, self.latent_shape(batch), self.cfg.loss,
                               self.parts.noise_scheduler.config.num_train_timesteps)  # fmt: skip
        latents, cond = self.inputs(batch, draws.latent_eps.to(device))
        return objective.sample_losses(self.parts, latents, cond, draws, self.cfg.loss)

    def latent_shape(self, batch: TrainBatch) -> tuple[int, int, int]:
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        height, width = (int(v) // scale for v in batch.target_size[0])
        return (self.unet.config.in_channels, height, width)

    def inputs(self, batch: TrainBatch, eps: torch.Tensor
               ) -> tuple[torch.Tensor, objective.Conditioning]:  # fmt: skip
        """The batch's latents (posterior samples with `eps`) and text conditioning."""
        latents = self._latents(batch, eps)
        ids = objective.time_ids(batch.original_size, batch.crop_top_left, batch.target_size)
        text_grad = self.cfg.adapter.train_text_encoders
        with nullcontext() if text_grad else torch.no_grad():
            cond = objective.encode_prompts(self.parts, batch.captions, ids.to(eps.device),
                                            self.cfg.captions.max_tokens)  # fmt: skip
        return latents, cond

    def _latents(self, batch: TrainBatch, eps: torch.Tensor) -> torch.Tensor:
        """VAE posterior samples: of the images, or of the cached posterior the batch carries."""
        post = batch.posterior
        if post is None:
            return objective.to_latents(self.vae, unit_pixels(batch.pixels, eps.device), eps)
        mean, std = (t.to(eps, non_blocking=True) for t in post)
        return latents_from_cache(mean, std, eps, self.vae.config.scaling_factor)


def caption_tally(data) -> list[int]:
    """A batch's figures in CAPTION_COUNTS order."""
    return [data.captions_cut, len(data.captions), data.captions_text, data.captions_both,
            data.captions_fallback]  # fmt: skip


def build_optimizer(cfg: TrainConfig, adapters: lokr.Adapters) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = [{"params": adapters.parameters("unet"), "lr": o.lr_unet}]
    text = adapters.parameters("text_encoder") + adapters.parameters("text_encoder_2")
    if text:
        groups.append({"params": text, "lr": o.lr_text})
    kw = {"betas": o.betas, "weight_decay": o.weight_decay}
    if o.kind == "adamw":
        return torch.optim.AdamW(groups, **kw)
    import bitsandbytes as bnb

    check_bitsandbytes(bnb.__version__)
    return (bnb.optim.Lion8bit if o.kind == "lion8bit" else bnb.optim.AdamW8bit)(groups, **kw)


def build_schedule(cfg: TrainConfig, optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, cosine = cfg.optim.warmup_steps, cfg.optim.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Holds the run's objects; `train()` reads as the outline of a run."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, d: Dist):
        self.cfg, self.run_dir, self.d = cfg, Path(run_dir), d
        self.out = self.run_dir / "train"
        captions = self.run_dir / "tag" / "captions.parquet"
        items = load_items(self.run_dir / "buckets" / "manifest.parquet", captions,
                           cfg.layout or "epsilon", posts_file(self.run_dir))  # fmt: skip
        # with validation off: `items` itself, and today's batch order
        self.items, held, self.validation = val.split(items, cfg.validation, cfg.batch_size)
        self.batches = BucketBatches(self.items, cfg.batch_size, d.world, d.rank, cfg.seed)
        loading = time.perf_counter()
        self.parts, self.adapters = self._model()
        if d.rank == 0:
            print(f"kohaku-train: model loaded in {time.perf_counter() - loading:.1f} s "
                  f"({cfg.precision}, {d.device})", flush=True)  # fmt: skip
        self.items = with_budget(self.items, self.parts.tokenizer, cfg.captions)
        lengths = self.items.budget.lengths  # rank 0 counts the full captions once
        self.token_stats = (token_stats(self.items.parts, lengths, cfg.captions.max_tokens)
                            if d.rank == 0 else None)  # fmt: skip
        # since this process started: captions cut by the token budget, drawn, of the text,
        # of tags and text, fallen back to tags (text drawn, none there)
        self.captions = [0] * len(CAPTION_COUNTS)
        self.cache = self._latent_cache(items)  # the held-out posts' latents too
        # never run from here on: the decoder, and the encoder when the cache has every latent
        free_unused_vae(self.parts.vae, encoder=self.cache is None)
        self.denoiser = Denoiser(self.parts, self.adapters, cfg)
        self.model = self._wrap(self.denoiser)
        self.source = BatchSource(self.items, self.run_dir, cfg.captions, cfg.seed, self.cache)
        self.validator = self._validator(held)
        self.val_loss: float | None = None  # the last one measured
        self.ema = (EMA(trainable(self.adapters.networks), cfg.ema, d.device)
                    if cfg.ema.enabled else None)  # fmt: skip
        self.optimizer = build_optimizer(cfg, self.adapters)
        self.total = cfg.max_steps or cfg.epochs * self.batches.batches_per_epoch // cfg.grad_accum
        self.scheduler = build_schedule(cfg, self.optimizer, self.total)
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.precision == "fp16")
        self.stop_requested = False
        self.metrics = MetricLog(self.out)  # metrics.jsonl, TensorBoard, stdout (rank 0)
        self.val_seconds = 0.0  # spent on validation, left out of images_per_s

    def _model(self):
        """The base streamed onto the device: UNet and text encoders frozen in the training
        precision, the VAE in `vae_dtype_for` it; then the LoKr (fp32 parameters)."""
        cfg = self.cfg.model
        dtype = DTYPES[self.cfg.precision]
        source = schedule_source(check_model(cfg), self.cfg.loss)  # + base LoKr
        parts = load_sdxl(source, dtype, self.d.device, vae_dtype_for(dtype))
        if cfg.restore_embeddings_from is not None:
            restore_embeddings(parts, read_embeddings(cfg.restore_embeddings_from,
                                                      cfg.allow_pickle))  # fmt: skip
        models = {"unet": parts.unet}
        if self.cfg.adapter.train_text_encoders:
            models |= {"text_encoder": parts.text_encoder, "text_encoder_2": parts.text_encoder_2}
        preset = lokr.load_preset(self.cfg.adapter.preset)
        lokr.check_preset(preset, models)
        adapters = lokr.attach(preset, models, self.cfg.seed)
        for net in adapters.networks.values():
            net.to(self.d.device)
        if self.cfg.gradient_checkpointing:
            checkpoint_activations(parts, self.cfg.adapter.train_text_encoders)
        return parts, adapters

    def _latent_cache(self, items) -> LatentCache | None:
        """Rank 0 encodes what the cache lacks of `items`; then every rank reads it."""
        if self.cfg.latent_cache is None:
            return None
        vae = self.parts.vae
        if self.d.rank == 0:
            cache_latents(
                items, self.run_dir, vae, Path(self.cfg.latent_cache), loader=self.cfg.loader
            )
        self.d.barrier()
        return LatentCache(Path(self.cfg.latent_cache) / vae_key(vae)[:16])

    def _validator(self, held) -> val.Validator | None:
        """The held-out posts' loss, this rank's share; rank 0 records which they are."""
        if self.validation is None:
            return None
        if self.d.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            val.write_record(self.validation, self.out)
        held = replace(held, budget=self.items.budget)  # one token count cache for both
        return val.Validator(self.validation, held, self.run_dir, self.cfg.captions,
                             self.cfg.loader, self.d.device, self.d.rank, self.d.world,
                             self.cache)  # fmt: skip

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.d.world == 1:
            return module
        ids = [self.d.device.index] if self.d.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def train(self) -> dict:
        """Resume if a checkpoint exists, run to the last step, export; returns a summary."""
        pos = self._resume()
        if self.d.rank == 0:
            self.metrics.start(pos.step)  # what a killed process logged past the checkpoint
        signal.signal(signal.SIGTERM, self._on_sigterm)
        order = BatchOrder(self.batches, DataPosition(pos.epoch, pos.index))
        stream = batch_loader(self.source, order, self.cfg.loader, self.d.device)
        step, start, images = pos.step, time.perf_counter(), 0
        while step < self.total:
            micro = [next(stream) for _ in range(self.cfg.grad_accum)]
            loss = self.train_step(micro)
            step, images = step + 1, images + len(micro) * self.cfg.batch_size * self.d.world
            nxt = self.batches.next_position(micro[-1].position)
            pos = ckpt.Position(step, nxt.epoch, nxt.index)
            if self.ema is not None:
                self.ema.update(step)
            measured = self._validate(step)
            self._log(step, loss, images / (time.perf_counter() - start - self.val_seconds),
                      measured)  # fmt: skip
            if self._should_stop() or step % self.cfg.checkpoint_every == 0:
                self.save(pos)
                if self.stop_requested:
                    return {"status": "stopped", "step": step}
        return self._finish(step)

    def train_step(self, batches: list[TrainBatch]) -> float:
        """One optimizer step over `grad_accum` micro-batches; returns the mean loss."""
        total = 0.0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or self.d.world == 1
            gens = [objective.sample_generator(self.cfg.seed, batch.epoch, pid, repeat)
                    for pid, repeat in batch.samples()]  # fmt: skip
            self.captions = [a + b for a, b in zip(self.captions, caption_tally(batch),
                                                   strict=True)]  # fmt: skip
            with nullcontext() if sync else self.model.no_sync():
                with self._autocast():
                    loss = self.model(batch, gens).mean() / len(batches)
                # outside autocast (as PyTorch advises): leaving it frees its cast cache (the
                # bf16 copies of fp32 leaf weights that it cast for an op) before the gradients
                # pile up; the backward ops run in the forward's dtypes either way and
                # checkpoints recompute under autocast (bit-identical weights, tested by hand)
                self.scaler.scale(loss).backward()
            total += loss.item()
        self._clip()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._mean_over_ranks(total)

    def _mean_over_ranks(self, value: float) -> float:
        if self.d.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.d.device)
        dist.all_reduce(t)
        return t.item() / self.d.world

    def _sum_over_ranks(self, values: list[int]) -> list[int]:
        if self.d.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.int64, device=self.d.device)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def _validate(self, step: int) -> dict[str, float]:
        """At a validation step: the held-out loss (`val_loss`) and, with an EMA, the EMA
        weights' (`val_loss_ema`), each the mean over every rank's held-out samples."""
        if self.validator is None or not self.validator.due(step, self.total):
            return {}
        start, out = time.perf_counter(), {}
        out["val_loss"] = self.validator.mean_loss(self.denoiser, self._autocast)
        if self.ema is not None:
            with self.ema.swapped_in():
                out["val_loss_ema"] = self.validator.mean_loss(self.denoiser, self._autocast)
        self.val_seconds += time.perf_counter() - start
        self.val_loss = out["val_loss"]
        return out

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.float16 if self.cfg.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.d.device.type, dtype=dtype)

    def _clip(self) -> None:
        if self.cfg.optim.max_grad_norm is None:
            return
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm)

    def _on_sigterm(self, *_: object) -> None:
        self.stop_requested = True

    def _should_stop(self) -> bool:
        """All ranks agree (a SIGTERM may reach them between different steps)."""
        flag = torch.tensor([1.0 if self.stop_requested else 0.0])
        if self.d.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop_requested = bool(flag.item())
        return self.stop_requested

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        return {f"{c}.{k}": v for c, net in self.adapters.networks.items()
                for k, v in net.state_dict().items()}  # fmt: skip

    def save(self, pos: ckpt.Position) -> None:
        adapter = self._adapter_state()
        state = ckpt.TrainState(adapter, self.optimizer.state_dict(),
                                self.scheduler.state_dict(), self.scaler.state_dict() or None,
                                pos, self.ema.state(adapter) if self.ema else None)  # fmt: skip
        ckpt.save(self.out / "checkpoints", state, self.d.rank, self.d.world, self.d.barrier)
        if self.d.rank == 0:
            ckpt.prune(self.out / "checkpoints", self.cfg.keep_checkpoints)

    def _resume(self) -> ckpt.Position:
        path = ckpt.latest(self.out / "checkpoints")
        if path is None:
            return ckpt.Position(0, 0, 0)
        state = ckpt.load(path, self.d.rank)
        for c, net in self.adapters.networks.items():
            net.load_state_dict({k.split(".", 1)[1]: v for k, v in state.adapter.items()
                                 if k.split(".", 1)[0] == c})  # fmt: skip
        if self.ema is not None:
            if state.ema is None:
                raise ValueError(f"{path} has no {ckpt.EMA_FILE}: it was written without "
                                 "train.ema; resume without it, or start the run over")  # fmt: skip
            self.ema.load(state.ema)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        return state.position

    def _log(self, step: int, loss: float, rate: float, measured: dict[str, float]) -> None:
        """A metric line every `log_every` steps, at the last step and at every validation
        step (with `val_loss` and `val_loss_ema` on it)."""
        due = step % self.cfg.log_every == 0 or step == self.total or measured
        if self.d.rank != 0 or not due:
            return
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        line = {"step": step, "total": self.total, "loss": loss, "lr_unet": lrs[0],
                "lr_text": lrs[1] if len(lrs) > 1 else None, "images_per_s": rate,
                **measured}  # fmt: skip
        self.metrics.write(line)

    def _finish(self, step: int) -> dict:
        self.metrics.close()
        tally = dict(zip(CAPTION_COUNTS, self._sum_over_ranks(self.captions), strict=True))
        if self.validator is not None and self.val_loss is None:  # resumed after the last step
            self._validate(step)
        if self.d.rank == 0:
            self._export("lokr.safetensors", self.run_dir.name, {})
            result = {"status": "done", "step": step, "lokr": "lokr.safetensors", **tally,
                      "caption_tokens": self.token_stats.as_counts(),
                      **self._export_ema(step), **self._validation_record()}  # fmt: skip
            (self.out / "result.json").write_text(json.dumps(result))
        self.d.barrier()
        return {"status": "done", "step": step}

    def _export(self, name: str, title: str, extra: dict[str, str]) -> None:
        lokr.save(self.adapters, self.out / name, torch.float16,
                  prediction=self.cfg.loss.prediction, title=title,
                  zero_snr=self.cfg.loss.zero_terminal_snr,
                  extra={**self.parts.trained_on(), **extra})  # fmt: skip

    def _export_ema(self, step: int) -> dict:
        """With an EMA: its LoKr file, named for result.json; else nothing."""
        if self.ema is None:
            return {}
        record = {"decay": self.cfg.ema.decay, "warmup": self.cfg.ema.warmup,
                  "start_step": self.cfg.ema.start_step, "step": step}  # fmt: skip
        with self.ema.swapped_in():
            self._export(EMA_LOKR, f"{self.run_dir.name}-ema", {META_EMA: json.dumps(record)})
        return {"lokr_ema": EMA_LOKR}

    def _validation_record(self) -> dict:
        """With validation: the held-out set and its last loss, for result.json."""
        if self.validation is None:
            return {}
        return {"validation": {"posts": len(self.validation.ids),
                               "sha256": self.validation.digest, "file": val.RECORD},
                "val_loss": self.val_loss}  # fmt: skip
