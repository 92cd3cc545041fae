"""Sampling for evaluation: the base SDXL as a diffusers pipeline, with a LoKr checkpoint of
the run hooked in at a weight or merged into the weights, and fixed seeds.

Reads the base model (`kohaku.sdxl.model`), `<run>/train/checkpoints/step-NNNNNN/
adapter.safetensors` (LoKr tensors under training names, `<component>.<lycoris key>`) and,
from a run with `train.ema`, `ema.safetensors` beside it (the same names, the EMA's weights),
`<run>/train/lokr.safetensors` (kohya names, its preset in the metadata) and
`lokr-ema.safetensors` (the EMA's, the same layout),
`<run>/train/result.json` and `<run>/train/config.json`. Writes nothing: pictures come back
as PIL images.

Base LoKr: a run trained on top of base + an earlier LoKr (`train.model.lokr`) is sampled
from the same base + LoKr (the source carries it, `kohaku.sdxl.model.check_model`, and
the loader folds it in as the weights stream), its own LoKr on top; `check_base_lokr`
refuses a base without it (the final file records its sha256 and weight).

Seeds: each picture's initial latents are drawn on the CPU from its own seed and handed to
the pipeline, so a picture depends on its prompt and seed only: not on the batch it is in,
the device or the checkpoint (every checkpoint starts from the same noise).

Schedule: the base's own (a v-prediction / zero-terminal-SNR file's `v_pred` / `ztsnr` keys, a
folder's scheduler), or, for a single file that says nothing, the run's `train.loss` (as the
trainer resolves it, `kohaku.sdxl.schedule.schedule_source`). A zero-terminal-SNR model is
sampled with trailing timesteps from its rescaled betas (the first step at t = 999, pure
noise) and CFG rescale (`guidance_rescale`), as Lin et al. 2023 prescribe.

Prompts: encoded here as in training (`kohaku.sdxl.text`: chunks of 75 tokens up to
`max_tokens`) and handed to the pipeline as embeddings, so diffusers never cuts one at 77.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from kohaku.errors import InputError
from kohaku.evaluate.config import EvaluateConfig
from kohaku.sdxl import lokr
from kohaku.sdxl.lokr_deltas import LokrLayer, base_record
from kohaku.sdxl.model import MODELS, ModelSource, SDXLParts, load_sdxl, vae_dtype_for
from kohaku.sdxl.schedule import schedule_source
from kohaku.sdxl.text import encode_text
from kohaku.train import EMA_FILE, EMA_LOKR, META
from kohaku.train.config import TrainConfig

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
ZERO_SNR_GUIDANCE_RESCALE = 0.7  # arXiv 2305.08891, section 3.4 (phi = 0.7)


@dataclass(frozen=True)
class Checkpoint:
    """What is sampled: the base alone (`path` None) or a LoKr file of the run."""

    label: str  # base, step-NNNNNN, final; step-NNNNNN-ema, final-ema: the EMA's weights
    step: int | None  # optimizer steps (base: 0; final: from result.json, if there)
    path: Path | None
    names: Literal["training", "kohya"] | None = None


@dataclass(frozen=True)
class Job:
    """One picture: a prompt and a seed."""

    prompt_id: str
    prompt: str
    seed: int


# ---------------------------------------------------------------------------- checkpoints


def list_checkpoints(
    run_dir: Path, which: str | list[int], include_base: bool = False, ema: bool = True
) -> list[Checkpoint]:
    """The checkpoints `which` names (final, all, or steps), base first, then by step; with
    `ema`, each followed by its EMA where the run kept one (`with_ema`)."""
    chosen = _chosen(Path(run_dir) / "train", which)
    base = [Checkpoint("base", 0, None)] if include_base else []
    if not base and not chosen:
        raise InputError("nothing to evaluate: no checkpoint chosen and include_base is off")
    return base + (with_ema(Path(run_dir) / "train", chosen) if ema else chosen)


def _chosen(train: Path, which: str | list[int]) -> list[Checkpoint]:
    steps = complete_steps(train / "checkpoints")
    final = _final(train)
    if which == "final":
        if final is None:
            raise InputError(f"{train / 'lokr.safetensors'} does not exist: train first, or "
                             "choose evaluate.checkpoints = 'all' or a list of steps")  # fmt: skip
        chosen = [final]
    elif which == "all":
        chosen = [_step(train, s) for s in steps if final is None or s != final.step]
        chosen += [final] if final else []
    else:
        absent = sorted(set(which) - set(steps))
        if absent:
            raise InputError(f"no complete checkpoint for steps {absent} in "
                             f"{train / 'checkpoints'}; there are {steps}")  # fmt: skip
        chosen = [_step(train, s) for s in sorted(which)]
    return chosen


def with_ema(train: Path, chosen: list[Checkpoint]) -> list[Checkpoint]:
    """Each checkpoint followed by its EMA when there is one: `step-NNNNNN-ema` (the
    checkpoint's ema.safetensors, training names), `final-ema` (lokr-ema.safetensors)."""
    out = []
    for c in chosen:
        assert c.path is not None
        ema = c.path.parent / (EMA_FILE if c.names == "training" else EMA_LOKR)
        out += [c] + ([replace(c, label=f"{c.label}-ema", path=ema)] if ema.is_file() else [])
    return out


def complete_steps(root: Path) -> list[int]:
    """Steps of the checkpoints whose sidecar exists (the others do not count)."""
    dirs = [p for p in Path(root).glob("step-*") if (p / META).is_file()]
    return sorted(int(p.name.split("-")[1]) for p in dirs if p.name.split("-")[1].isdigit())


def _step(train: Path, step: int) -> Checkpoint:
    path = train / "checkpoints" / f"step-{step:06d}" / "adapter.safetensors"
    return Checkpoint(f"step-{step:06d}", step, path, "training")


def _final(train: Path) -> Checkpoint | None:
    path = train / "lokr.safetensors"
    if not path.is_file():
        return None
    result = train / "result.json"
    step = json.loads(result.read_text()).get("step") if result.is_file() else None
    return Checkpoint("final", step, path, "kohya")


def read_train_config(run_dir: Path) -> TrainConfig | None:
    path = Path(run_dir) / "train" / "config.json"
    return TrainConfig.model_validate_json(path.read_text()) if path.is_file() else None


def check_base_lokr(source: ModelSource, run_dir: Path, checkpoints: Sequence[Checkpoint]) -> None:
    """The base holds the LoKr the run's LoKr was trained on top of (same sha256 and weight):
    else its pictures would show neither what the run started from nor what it learnt."""
    want = trained_on(run_dir, checkpoints)
    have = source.lokr
    if want is None:
        if have is not None:
            log.warning("evaluate: the base gets LoKr %s, though the run's LoKr was not "
                        "trained on top of one", have.path)  # fmt: skip
        return
    if have is None or (have.sha256, have.weight) != (want["sha256"], want["weight"]):
        got = "none" if have is None else f"{have.path} (sha256 {have.sha256[:16]}, weight " \
            f"{have.weight:g})"  # fmt: skip
        raise InputError(f"the run's LoKr was trained on top of LoKr {want['file']} (sha256 "
                         f"{want['sha256'][:16]}, weight {want['weight']:g}), but the base "
                         f"gets {got}: set evaluate.base_model.lokr (and lokr_weight) to "
                         "it, or leave evaluate.base_model empty")  # fmt: skip


def trained_on(run_dir: Path, checkpoints: Sequence[Checkpoint]) -> dict | None:
    """The base LoKr of the run: the final file's record, else `train.model.lokr`'s."""
    final = [c.path for c in checkpoints if c.names == "kohya" and c.path is not None]
    if final:
        with safe_open(str(final[0]), "pt") as f:
            return base_record(f.metadata() or {}, final[0])
    train = read_train_config(run_dir)
    if train is None or train.model.lokr is None or not Path(train.model.lokr).is_file():
        return None
    return LokrLayer.of(train.model.lokr, train.model.lokr_weight).record()


def recipe(run_dir: Path, checkpoints: Sequence[Checkpoint]) -> tuple[lokr.LokrPreset, list[str]]:
    """The LoKr preset and adapted components of the run: from the final file's metadata,
    else from the train config and the first checkpoint's tensor names."""
    files = [c for c in checkpoints if c.path is not None]
    final = [c for c in files if c.names == "kohya"]
    if final:
        return lokr.read_recipe(final[0].path)  # type: ignore[arg-type]
    train = read_train_config(run_dir)
    if train is None:
        raise InputError(f"{Path(run_dir) / 'train' / 'config.json'} does not exist: the "
                         "checkpoints' LoKr preset is unknown")  # fmt: skip
    with safe_open(str(files[0].path), "pt") as f:
        keys = list(f.keys())
    components = [c for c in COMPONENTS if any(k.startswith(c + ".") for k in keys)]
    return lokr.load_preset(train.adapter.preset), components


def load_weights(adapters: lokr.Adapters, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's LoKr tensors into attached adapters of the same preset."""
    assert checkpoint.path is not None
    if checkpoint.names == "kohya":
        lokr.load_into(adapters, checkpoint.path)
        return
    state = load_file(str(checkpoint.path))
    for component, net in adapters.networks.items():
        own = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == component}
        missing = sorted(set(net.state_dict()) - set(own))
        if missing:
            raise InputError(f"{checkpoint.path} lacks {len(missing)} {component} LoKr tensors, "
                             f"e.g. {missing[:3]}")  # fmt: skip
        net.load_state_dict(own)


# ---------------------------------------------------------------------------- sampling


def resolve_device(cfg: EvaluateConfig) -> torch.device:
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(cfg: EvaluateConfig, device: torch.device) -> torch.dtype:
    if cfg.precision == "auto":  # bf16 on the CPU: half the memory of fp32, no fp16 overflow
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return DTYPES[cfg.precision]


def decode_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The VAE's dtype when sampling in `dtype`: the trainer's (`vae_dtype_for`: float32
    under fp16, where SDXL 1.0's VAE overflows), and float32 on a CPU too (half-precision
    convolutions are emulated there: a 256 px bf16 decode of the full-size VAE ran over 30
    minutes on a 2-core VM). The VAE is 84M parameters: float32 costs 0.17 GB more."""
    return torch.float32 if device.type == "cpu" else vae_dtype_for(dtype)


def sampling_source(source: ModelSource, run_dir: Path) -> ModelSource:
    """The base with the schedule it is sampled with: its own where it says (a base other
    than the run's may differ from `train.loss`: logged), else the run's `train.loss`."""
    train = read_train_config(run_dir)
    if train is None:
        return source
    if source.declared:
        if (source.prediction, source.zero_snr) != (train.loss.prediction,
                                                    train.loss.zero_terminal_snr):  # fmt: skip
            log.warning("evaluate: %s is sampled as %s (zero terminal SNR: %s), its own "
                        "schedule, though the run trained %s (%s)", source.path,
                        source.prediction, source.zero_snr, train.loss.prediction,
                        train.loss.zero_terminal_snr)  # fmt: skip
        return source
    return schedule_source(source, train.loss)


def guidance_rescale(cfg: EvaluateConfig, source: ModelSource) -> float:
    """`cfg.guidance_rescale`, by default the paper's 0.7 for a zero-terminal-SNR model."""
    if cfg.guidance_rescale is not None:
        return cfg.guidance_rescale
    return ZERO_SNR_GUIDANCE_RESCALE if source.zero_snr else 0.0


def build_pipeline(parts: SDXLParts) -> StableDiffusionXLPipeline:
    """The SDXL pipeline from loaded parts, with Euler (SDXL 1.0's inference default) made
    from the training schedule's config: a zero-terminal-SNR schedule keeps its rescaled
    betas and trailing spacing (diffusers' Euler caps the last sigma at 4096)."""
    pipe = StableDiffusionXLPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
        tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=parts.unet,
        scheduler=EulerDiscreteScheduler.from_config(parts.noise_scheduler.config),
        add_watermarker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Sampler:
    """The base model with the run's LoKr: `use(checkpoint)` then `sample(jobs)`.

    hook: the base is loaded once in the sampling dtype; the LoKr modules are attached
    once and get each checkpoint's tensors and the multiplier `lokr_weight` (base: the
    pictures are made before anything is attached). merge: per checkpoint the base is
    loaded in float32, the LoKr folded in at `lokr_weight`, then cast."""

    def __init__(self, source: ModelSource, cfg: EvaluateConfig, run_dir: Path,
                 checkpoints: Sequence[Checkpoint]):  # fmt: skip
        self.source, self.cfg, self.run_dir = sampling_source(source, run_dir), cfg, Path(run_dir)
        self.guidance_rescale = guidance_rescale(cfg, self.source)
        self.device = resolve_device(cfg)
        self.dtype = resolve_dtype(cfg, self.device)
        self.vae_dtype = decode_dtype(self.dtype, self.device)
        self.recipe = (recipe(run_dir, checkpoints)
                       if any(c.path for c in checkpoints) else None)  # fmt: skip
        self.parts: SDXLParts | None = None
        self.adapters: lokr.Adapters | None = None
        self.pipe: StableDiffusionXLPipeline | None = None

    def use(self, checkpoint: Checkpoint) -> None:
        if self.cfg.apply == "merge":
            self.parts = self.pipe = None  # free the previous copy first
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.parts = self._load(torch.float32 if checkpoint.path else self.dtype)
            if checkpoint.path is not None:
                self._merge(checkpoint)
                _to(self.parts, self.device, self.dtype, self.vae_dtype)
        else:
            if self.parts is None:
                self.parts = self._load(self.dtype)
            if checkpoint.path is not None:
                self._hook(checkpoint)
            elif self.adapters is not None:  # the base after a checkpoint: LoKr off
                for net in self.adapters.networks.values():
                    net.set_multiplier(0.0)
        self.pipe = build_pipeline(self.parts)

    def _load(self, dtype: torch.dtype) -> SDXLParts:
        """Streamed straight onto the device; the VAE in `decode_dtype` (it decodes the
        pipeline's latents itself, `decode`)."""
        return load_sdxl(self.source, dtype, self.device, self.vae_dtype)

    def _attach(self) -> lokr.Adapters:
        assert self.parts is not None and self.recipe is not None
        preset, components = self.recipe
        models = {c: getattr(self.parts, c) for c in components}
        return lokr.attach(preset, models, seed=0)

    def _hook(self, checkpoint: Checkpoint) -> None:
        if self.adapters is None:
            self.adapters = self._attach()
            for net in self.adapters.networks.values():
                net.to(self.device, self.dtype)
        load_weights(self.adapters, checkpoint)
        for net in self.adapters.networks.values():
            net.set_multiplier(self.cfg.lokr_weight)

    def _merge(self, checkpoint: Checkpoint) -> None:
        adapters = self._attach()
        load_weights(adapters, checkpoint)
        for net in adapters.networks.values():
            net.to(self.device)
            net.merge_to(self.cfg.lokr_weight)
            net.restore()

    @torch.no_grad()
    def sample(self, jobs: Sequence[Job]) -> Iterator[Image.Image]:
        """The pictures of `jobs`, in order, `batch_size` at a time."""
        assert self.pipe is not None, "call use(checkpoint) first"
        cfg, size = self.cfg, (self.cfg.height, self.cfg.width)
        for start in range(0, len(jobs), cfg.batch_size):
            batch = jobs[start : start + cfg.batch_size]
            latents = torch.stack([initial_latents(j.seed, self.latent_shape(size))
                                   for j in batch])  # fmt: skip
            out = self.pipe(
                **self.conditioning([j.prompt for j in batch]),
                latents=latents.to(self.device, self.dtype),
                generator=[torch.Generator().manual_seed(j.seed) for j in batch],
                num_inference_steps=cfg.steps, guidance_scale=cfg.cfg_scale,
                guidance_rescale=self.guidance_rescale,
                width=cfg.width, height=cfg.height, output_type="latent",
            )  # fmt: skip
            yield from self.decode(out.images)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """The pipeline's latents as pictures, decoded by the VAE in its own dtype (diffusers
        would decode in the latents' dtype), as the pipeline unscales them."""
        assert self.pipe is not None
        vae = self.pipe.vae
        latents = latents.to(vae.dtype)
        mean, std = (getattr(vae.config, k, None) for k in ("latents_mean", "latents_std"))
        if mean is not None and std is not None:
            shape = (1, len(mean), 1, 1)
            mean, std = (torch.tensor(v).view(shape).to(latents) for v in (mean, std))
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")

    def schedule_settings(self) -> dict:
        """What pictures depend on in the schedule beyond the base file: nothing for SDXL's
        own epsilon schedule (the keys of earlier evaluations hold), else the prediction,
        zero terminal SNR and CFG rescale."""
        s = self.source
        if (s.prediction, s.zero_snr, self.guidance_rescale) == ("epsilon", False, 0.0):
            return {}
        return {"prediction": s.prediction, "zero_terminal_snr": s.zero_snr,
                "guidance_rescale": self.guidance_rescale}  # fmt: skip

    def conditioning(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The pipeline's prompt and negative embeddings, encoded as in training (chunks of 75
        tokens up to `max_tokens`, `kohaku.sdxl.text`): the pipeline tokenizes nothing, so
        nothing is cut at 77 tokens. The negative prompt is encoded with the prompts (the
        same number of chunks); an empty one gives SDXL's zeroed negative conditioning."""
        assert self.parts is not None
        negative, n = self.cfg.negative_prompt, len(prompts)
        text = encode_text(self.parts, prompts + ([negative] if negative else []),
                           self.cfg.max_tokens, self.device)  # fmt: skip
        if text.truncated:
            log.warning("evaluate: %d prompts longer than max_tokens = %d tokens were cut",
                        text.truncated, self.cfg.max_tokens)  # fmt: skip
        hidden, pooled = text.hidden[:n], text.pooled[:n]
        if negative:
            neg = (text.hidden[n:].expand_as(hidden), text.pooled[n:].expand_as(pooled))
        else:
            neg = (torch.zeros_like(hidden), torch.zeros_like(pooled))
        return {"prompt_embeds": hidden, "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": neg[0],
                "negative_pooled_prompt_embeds": neg[1]}  # fmt: skip

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, int, int]:
        assert self.parts is not None
        scale = 2 ** (len(self.parts.vae.config.block_out_channels) - 1)
        return (self.parts.unet.config.in_channels, size[0] // scale, size[1] // scale)


def initial_latents(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal latents of one picture, from its seed alone (CPU, float32)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _to(parts: SDXLParts, device: torch.device, dtype: torch.dtype,
        vae_dtype: torch.dtype) -> None:  # fmt: skip
    for name in MODELS:
        getattr(parts, name).to(device, vae_dtype if name == "vae" else dtype)
