"""The train stage's config (pydantic, frozen, extra="forbid"); cross-field checks run
before anything is loaded. The recipe numbers (recipes.md) are the defaults of `delta`.

Reads and writes nothing; `kohaku.sdxl.lokr` reads the LoKr preset a config names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

# the train stage's version (part of its manifest and cache key); here, not in stage.py,
# so that a cache key needs no torch
TRAIN_VERSION = "1"
# Captions reach the text encoders in chunks of 75 tokens (77 with the start and end token,
# CLIP's context); kohya sd-scripts' --max_token_length takes 75, 150 or 225, Kohaku XL Zeta
# trained tags plus natural language at 300 (issue 14). The ceiling is 9 chunks: each chunk
# is encoded on its own (no context across chunks), and at 1024x1024 on the meta device
# (FlopCounterMode, README "Longer text") 9 chunks cost +8 % UNet forward+backward FLOPs
# and, with both text encoders trained, about +21 % of the whole step against one chunk;
# Zeta's 300 (4 chunks) is +8 %. Past 675 the cost grows with little left to say.
CHUNK_TOKENS = 75
MAX_TOKENS_LIMIT = 675
DEFAULT_MAX_TOKENS = 225  # kohya's SDXL runs


def check_max_tokens(value: int) -> int:
    """`value` when it is a positive multiple of CHUNK_TOKENS up to MAX_TOKENS_LIMIT."""
    if value < 1 or value % CHUNK_TOKENS or value > MAX_TOKENS_LIMIT:
        allowed = ", ".join(str(n) for n in range(CHUNK_TOKENS, MAX_TOKENS_LIMIT + 1, CHUNK_TOKENS))
        raise ValueError(f"max_tokens {value} must be a positive multiple of {CHUNK_TOKENS} up "
                         f"to {MAX_TOKENS_LIMIT} ({allowed})")  # fmt: skip
    return value


CaptionKind = Literal["tags", "text", "both"]


MaxTokens = Annotated[int, AfterValidator(check_max_tokens)]  # train and evaluate configs


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CaptionConfig(_Frozen):
    """Per-step caption augmentation (recipes: delta drops 10 % of general tags, epsilon 15 %)
    and, with natural-language texts (`tag.text_captions`), the per-step choice between the
    tags, the text in place of the body tags, or both (Kohaku XL Zeta's prompt format)."""

    shuffle: bool = Field(True, description="shuffle the body (general) tags every step")
    tag_dropout: float = Field(
        0.1, ge=0, lt=1, description="chance that each body tag is left out of a step's caption"
    )
    caption_dropout: float = Field(
        0.0, ge=0, lt=1, description="chance that a step's whole caption is empty"
    )
    separator: str = Field(", ", description="text between tags")
    max_tokens: MaxTokens = Field(
        DEFAULT_MAX_TOKENS, description="caption tokens the text encoders see, in chunks of "
        f"75 (75, 150, ... {MAX_TOKENS_LIMIT}; Zeta: 300); a longer caption loses body tags "
        "from its end, then whole sentences of its text, never its head or tail tags",
    )  # fmt: skip
    p_tags: float = Field(
        1.0, ge=0, le=1, description="chance that a step's caption is the tags alone"
    )
    p_text: float = Field(
        0.0, ge=0, le=1, description="chance that the text replaces the body (general) tags: "
        "head tags, text, tail tags; a post without text falls back to its tags (counted)",
    )  # fmt: skip
    p_both: float = Field(
        0.0, ge=0, le=1, description="chance of the tags and the text together (falls back "
        "to the tags like p_text); p_tags + p_text + p_both = 1",
    )  # fmt: skip
    text_position: Literal["after_tags", "before_tags"] = Field(
        "after_tags", description="where the text goes in a `both` caption: after the body "
        "tags (head, body, text, tail) or before them (head, text, body, tail)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> CaptionConfig:
        total = self.p_tags + self.p_text + self.p_both
        if abs(total - 1) > 1e-6:
            raise ValueError(f"train.captions p_tags {self.p_tags:g} + p_text {self.p_text:g} "
                             f"+ p_both {self.p_both:g} = {total:g}, not 1")  # fmt: skip
        return self

    @property
    def uses_text(self) -> bool:
        return self.p_text > 0 or self.p_both > 0

    def kind(self, u: float) -> CaptionKind:
        """The caption kind of a uniform draw `u` in [0, 1): tags below p_tags, then text,
        then both (a kind with chance 0 is never chosen, whatever the rounding)."""
        if u < self.p_tags or not self.uses_text:
            return "tags"
        if self.p_both == 0 or (self.p_text > 0 and u < self.p_tags + self.p_text):
            return "text"
        return "both"


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
    lokr: Path | None = Field(
        None, description="an earlier kohaku/kohya LoKr .safetensors merged into the base as "
        "it loads (epsilon rev2 resumed from rev1): the new LoKr trains on top of base + this "
        "one, and export and evaluate apply both, in order",
    )  # fmt: skip
    lokr_weight: float = Field(
        1.0, allow_inf_nan=False, description="multiplier of that LoKr's weight delta"
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.lokr is None and self.lokr_weight != 1.0:
            raise ValueError("model.lokr_weight is set but model.lokr is empty: name the "
                             "LoKr file to merge into the base, or drop lokr_weight")  # fmt: skip
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The base LoKr's fields are left out while empty, so that a config written before
        them keeps its JSON form and config hash (as `LossConfig` does)."""
        return _without_defaults(handler(self), ADDED_MODEL_FIELDS)


ADDED_MODEL_FIELDS = {"lokr": None, "lokr_weight": 1.0}  # issue 14


def _without_defaults(data: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    for name, default in added.items():
        if data.get(name, default) == default:
            data.pop(name, None)
    return data


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


Weighting = Literal["min_snr", "debiased", "none"]


class LossConfig(_Frozen):
    """What the UNet learns to predict on which noise schedule, and how each timestep's loss
    is weighted (`kohaku.train.objective.loss_weights`)."""

    prediction: Literal["epsilon", "v_prediction"] = Field("epsilon", description="target")
    zero_terminal_snr: bool = Field(
        False, description="rescale the schedule's betas so that the last timestep is pure "
        "noise (zero terminal SNR, Lin et al. 2023, arXiv 2305.08891; NoobAI-XL v-pred); "
        "needs prediction = v_prediction. Evaluation then samples with trailing timesteps",
    )  # fmt: skip
    weighting: Weighting | None = Field(
        None, description="per-timestep loss weight: min_snr (min-SNR, arXiv 2303.09556, with "
        "min_snr_gamma), debiased (debiased estimation, arXiv 2310.08442), none; empty = "
        "min_snr when min_snr_gamma is set, else none",
    )  # fmt: skip
    min_snr_gamma: float | None = Field(
        5.0, gt=0, description="min-SNR's gamma; empty = no min-SNR weighting"
    )
    noise_offset: float = Field(0.0, ge=0, description="offset noise strength (0.0357 in epsilon)")

    @property
    def weights(self) -> Weighting:
        """The weighting in effect (an empty `weighting` follows `min_snr_gamma`)."""
        if self.weighting is not None:
            return self.weighting
        return "none" if self.min_snr_gamma is None else "min_snr"

    @model_validator(mode="after")
    def _check(self) -> LossConfig:
        if self.zero_terminal_snr and self.prediction == "epsilon":
            raise ValueError("train.loss.zero_terminal_snr needs prediction = \"v_prediction\": "
                             "at the last step the noisy latent is the noise itself, so an "
                             "epsilon model cannot say anything about the image there")  # fmt: skip
        if self.weighting == "min_snr" and self.min_snr_gamma is None:
            raise ValueError("train.loss.weighting = \"min_snr\" needs min_snr_gamma (5 in the "
                             "paper and the recipes)")  # fmt: skip
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Fields added after the first release are left out while at their default, so that
        a config written before them keeps its JSON form and config hash (the train stage's
        resume key and cache key)."""
        return _without_defaults(handler(self), ADDED_LOSS_FIELDS)


ADDED_LOSS_FIELDS = {"zero_terminal_snr": False, "weighting": None}  # issue 14


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


class EmaConfig(_Frozen):
    """An exponential moving average of the LoKr weights (`kohaku.train.ema`), kept beside
    the trained ones: saved in every checkpoint, exported as `lokr-ema.safetensors`, offered
    to the evaluate stage. Off while `decay` is empty."""

    decay: float | None = Field(
        None, description="EMA decay per optimizer step, in (0, 1): 0.999 averages over about "
        "the last 1,000 steps, 0.9999 over 10,000; empty = no EMA",
    )  # fmt: skip
    device: Literal["same", "cpu"] = Field(
        "same", description="where the average lives: on the training device (fast), or in "
        "CPU memory (saves the device 4 bytes per LoKr parameter; one copy to the CPU per "
        "step)",
    )  # fmt: skip
    warmup: bool = Field(
        True, description="the decay ramps up as min(decay, (1 + n) / (10 + n)) over the n "
        "updates so far (TensorFlow's ExponentialMovingAverage num_updates, diffusers' "
        "EMAModel), so the average is not held near the untrained start",
    )  # fmt: skip
    start_step: int = Field(
        0, ge=0, description="the average copies the weights up to this optimizer step and "
        "averages after it (skips an early phase, e.g. the learning-rate warmup)",
    )  # fmt: skip

    @field_validator("decay")
    @classmethod
    def _decay(cls, decay: float | None) -> float | None:
        if decay is not None and not 0 < decay < 1:
            raise ValueError(f"decay {decay} must be between 0 and 1, both excluded (0.999 "
                             "is common; leave it empty for no EMA)")  # fmt: skip
        return decay

    @property
    def enabled(self) -> bool:
        return self.decay is not None


class ValidationConfig(_Frozen):
    """A held-out validation loss (`kohaku.train.validation`): posts chosen by `seed` from the
    bucket manifest are left out of training, and every `every` steps the LoKr's loss on
    them is measured with fixed noise and timesteps per post, so the curve is comparable
    from step to step. Off while neither `posts` nor `fraction` is set."""

    posts: int | None = Field(
        None, description="held-out posts (at least 1; fewer than the images); empty = "
        "`fraction`, or no validation",
    )  # fmt: skip
    fraction: float | None = Field(
        None, description="held-out share of the images, in (0, 1) (at least one post); "
        "instead of `posts`",
    )  # fmt: skip
    every: int = Field(
        100, description="optimizer steps between validation losses (also after the last)"
    )
    seed: int = Field(
        0, ge=0, description="which posts are held out, and their fixed noise and timesteps"
    )
    timesteps: int = Field(
        1, description="fixed timesteps per post, one in each of as many equal slices of "
        "[0, 1000): more give a steadier estimate at that many forward passes",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> ValidationConfig:
        if self.every < 1:
            raise ValueError(f"every {self.every}: validate every 1 or more optimizer steps")
        if self.timesteps < 1:
            raise ValueError(f"timesteps {self.timesteps}: at least 1 per post")
        if self.posts is not None and self.fraction is not None:
            raise ValueError("set posts or fraction, not both")
        if self.posts is not None and self.posts < 1:
            raise ValueError(f"posts {self.posts}: hold out at least 1 post (or leave it "
                             "empty for no validation)")  # fmt: skip
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise ValueError(f"fraction {self.fraction} must be between 0 and 1, both excluded")
        return self

    @property
    def enabled(self) -> bool:
        return self.posts is not None or self.fraction is not None

    def count(self, items: int) -> int:
        """Posts held out of `items` images (0 when off)."""
        if self.posts is not None:
            return self.posts
        if self.fraction is not None:
            return max(1, round(self.fraction * items))
        return 0


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
    gradient_checkpointing: bool = Field(
        False, description="trade compute for memory: the UNet's blocks and the trained text "
        "encoders' layers recompute their activations in the backward pass",
    )  # fmt: skip
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
    ema: EmaConfig = Field(
        EmaConfig(), description="an EMA of the LoKr weights, saved and exported beside them"
    )
    validation: ValidationConfig = Field(
        ValidationConfig(), description="a held-out validation loss every few steps"
    )

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

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """EMA and validation are left out while off, so that a config written before them
        keeps its JSON form and config hash (the resume key and cache key), as `LossConfig`
        does for its added fields."""
        return _without_defaults(handler(self), ADDED_TRAIN_FIELDS)


# issue 14; the serialized defaults (mode="json" throughout: what the hash and resume key see)
ADDED_TRAIN_FIELDS = {"ema": EmaConfig().model_dump(mode="json"),
                      "validation": ValidationConfig().model_dump(mode="json")}  # fmt: skip


def check_bitsandbytes(version: str) -> None:
    """Refuse the bitsandbytes releases whose 8-bit optimizers are broken (0.36.0-0.41.0)."""
    from packaging.version import Version

    if Version("0.36.0") <= Version(version) <= Version("0.41.0"):
        raise ValueError(f"bitsandbytes {version} has a broken 8-bit optimizer (0.36.0 to "
                         "0.41.0): install bitsandbytes>=0.41.1")  # fmt: skip
