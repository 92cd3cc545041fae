"""The train stage's config (pydantic, frozen, extra="forbid"); cross-field checks run
before anything is loaded. The recipe numbers (recipes.md) are the defaults of `delta`.

Reads and writes nothing; `kohaku.train.lokr` reads the LoKr preset a config names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# the train stage's version (part of its manifest and cache key); here, not in stage.py,
# so that a cache key needs no torch
TRAIN_VERSION = "1"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CaptionConfig(_Frozen):
    """Per-step caption augmentation (recipes: delta drops 10 % of general tags, epsilon 15 %)."""

    shuffle: bool = Field(True, description="shuffle the body (general) tags every step")
    tag_dropout: float = Field(
        0.1, ge=0, lt=1, description="chance that each body tag is left out of a step's caption"
    )
    caption_dropout: float = Field(
        0.0, ge=0, lt=1, description="chance that a step's whole caption is empty"
    )
    separator: str = Field(", ", description="text between tags")


class ModelConfig(_Frozen):
    """The SDXL base: a local diffusers folder or a single-file safetensors checkpoint."""

    path: Path = Field(description="diffusers folder or single-file .safetensors")
    config_dir: Path | None = Field(
        None, description="for a single file: a local diffusers folder with the configs "
        "and tokenizers (nothing is downloaded)",
    )  # fmt: skip
    allow_pickle: bool = Field(False, description="accept pickle checkpoints (.ckpt, .bin)")
    restore_embeddings_from: Path | None = Field(
        None, description="copy both text encoders' token and position embeddings from this "
        "model before training (delta restored SDXL 1.0's)",
    )  # fmt: skip


class AdapterConfig(_Frozen):
    """LoKr through lycoris-lora."""

    preset: str = Field("delta", description="LoKr preset: a built-in name or a TOML path")
    train_text_encoders: bool = Field(True, description="also train both text encoders")


class OptimConfig(_Frozen):
    kind: Literal["lion8bit", "adamw", "adamw8bit"] = Field("lion8bit", description="optimizer")
    lr_unet: float = Field(4e-5, gt=0, description="learning rate of the UNet LoKr")
    lr_text: float = Field(1e-5, ge=0, description="learning rate of the text encoder LoKr")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.95), description="beta1, beta2")
    schedule: Literal["constant", "cosine"] = Field("constant", description="after warmup")
    warmup_steps: int = Field(100, ge=0, description="linear warmup, in optimizer steps")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip; empty = no clipping")


class LossConfig(_Frozen):
    prediction: Literal["epsilon", "v_prediction"] = Field("epsilon", description="target")
    min_snr_gamma: float | None = Field(5.0, gt=0, description="min-SNR weighting; empty = off")
    noise_offset: float = Field(0.0, ge=0, description="offset noise strength (0.0357 in epsilon)")


class LoaderConfig(_Frozen):
    """How batches are built: images read, decoded and captioned in worker processes ahead
    of the training step (a torch DataLoader), or in the training process between steps.
    Nothing here changes what is trained: the order, captions and noise are the same for
    every setting, so a run may resume with other values."""

    workers: int | None = Field(
        None, ge=0, description="worker processes that build batches while the GPU trains; "
        "0 = in the training process, between steps; empty = min(4, CPU cores per "
        "process) on a GPU, 0 on the CPU",
    )  # fmt: skip
    prefetch: int = Field(2, ge=1, description="batches each worker keeps ready ahead")
    pin_memory: bool = Field(
        True, description="page-locked host copies of the batches (GPU only), so that the "
        "copy to the GPU runs alongside the computation",
    )  # fmt: skip


class ExportConfig(_Frozen):
    """Merged models written after training (the LoKr file is always written)."""

    formats: list[Literal["diffusers", "single_file"]] = Field(
        [], description="merged base + LoKr as a diffusers folder and/or a single file"
    )
    storage: Literal["fp32", "fp16", "bf16", "fp8"] = Field(
        "fp16", description="weight storage of the merged model (fp8 = e4m3fn, half of fp16)"
    )


class DistConfig(_Frozen):
    """How many processes train: torchrun's nodes and processes per node."""

    nproc_per_node: int = Field(1, ge=1, description="processes (GPUs) on each machine")
    nnodes: int = Field(1, ge=1, description="machines")
    node_rank: int = Field(0, ge=0, description="this machine's rank among them")
    master_addr: str = Field("127.0.0.1", description="address of the rank-0 machine")
    master_port: int = Field(29500, ge=1, le=65535, description="its rendezvous port")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class TrainConfig(_Frozen):
    """One LoKr training run over the bucket manifest."""

    model: ModelConfig = Field(description="the base model")
    adapter: AdapterConfig = Field(AdapterConfig(), description="the LoKr")
    optim: OptimConfig = Field(OptimConfig(), description="optimizer and schedule")
    loss: LossConfig = Field(LossConfig(), description="objective")
    captions: CaptionConfig = Field(CaptionConfig(), description="tag shuffle and dropout")
    layout: Literal["delta", "epsilon", "hakubooru"] | None = Field(
        None, description="caption layout (which tags keep their place); empty = the tag "
        "stage's layout",
    )  # fmt: skip
    seed: int = Field(0, description="data order, noise and initialisation")
    batch_size: int = Field(4, ge=1, description="images per micro-batch per rank")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    dist: DistConfig = Field(DistConfig(), description="processes and machines")
    export: ExportConfig = Field(ExportConfig(), description="merged models after training")
    global_batch: int | None = Field(
        None, description="expected batch_size * grad_accum * world_size; checked if given"
    )
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; empty = epochs")
    epochs: int = Field(1, ge=1, description="passes over the data when max_steps is empty")
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="mixed precision")
    gradient_checkpointing: bool = Field(False, description="trade compute for memory")
    latent_cache: Path | None = Field(
        None, description="folder of the VAE latent cache (fp16 posteriors by post id, reused "
        "across runs with the same VAE and images); empty = encode every step",
    )  # fmt: skip
    loader: LoaderConfig = Field(
        LoaderConfig(), description="batch building: worker processes and prefetch (the "
        "results do not depend on it)",
    )  # fmt: skip
    checkpoint_every: int = Field(500, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept (the last ones)")
    log_every: int = Field(10, ge=1, description="optimizer steps between metric lines")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        real = self.batch_size * self.grad_accum * self.dist.world_size
        if self.global_batch is not None and self.global_batch != real:
            raise ValueError(
                f"global_batch {self.global_batch} != batch_size {self.batch_size} x grad_accum "
                f"{self.grad_accum} x {self.dist.world_size} processes = {real}"
            )
        if self.dist.node_rank >= self.dist.nnodes:
            raise ValueError(f"dist.node_rank {self.dist.node_rank} >= nnodes {self.dist.nnodes}")
        return self


def check_bitsandbytes(version: str) -> None:
    """Refuse the bitsandbytes releases whose 8-bit optimizers are broken (0.36.0-0.41.0)."""
    from packaging.version import Version

    if Version("0.36.0") <= Version(version) <= Version("0.41.0"):
        raise ValueError(f"bitsandbytes {version} has a broken 8-bit optimizer (0.36.0 to "
                         "0.41.0): install bitsandbytes>=0.41.1")  # fmt: skip
