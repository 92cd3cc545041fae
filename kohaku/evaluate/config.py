"""The evaluate stage's config (pydantic, frozen, extra="forbid"). Reads and writes nothing.

The model paths (`clip_model`, `ccip_model`, `inception`) are local: nothing is downloaded,
and a metric whose model is not given (or not there) is reported as skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from kohaku.tag.config import Layout
from kohaku.train.config import DEFAULT_MAX_TOKENS, MAX_TOKENS_LIMIT, MaxTokens, ModelConfig

Checkpoints = Literal["final", "all"] | list[int]


# the evaluate stage's version (part of its manifest and cache key); here, not in
# stage.py, so that a cache key needs no torch
EVALUATE_VERSION = "2"  # 2: prompts over 75 tokens are encoded whole (issue 12)


class EvaluateConfig(BaseModel):
    """Sample a fixed prompt set with fixed seeds from the base model plus the run's LoKr
    checkpoints, then score the pictures (CLIP score, CCIP character fidelity, FID/KID)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # the prompt set (built from <run>/tag/captions.parquet)
    characters: int = Field(
        32, ge=0, description="the most frequent character tags prompted, each with its series"
    )
    styles: int = Field(8, ge=0, description="style probes: the most frequent artist tags")
    quality_probes: bool = Field(
        True, description="one probe per quality tag of the dataset (same content, same seeds)"
    )
    character_references: int = Field(
        4, ge=0, description="dataset images per character kept as CCIP references"
    )
    layout: Layout | None = Field(
        None, description="caption layout of the prompts; empty = the train stage's (epsilon "
        "when it has none, as in training)",
    )  # fmt: skip
    # sampling
    base_model: ModelConfig | None = Field(
        None, description="the SDXL to sample with (a merged model too); empty = the train "
        "stage's base model (<run>/train/config.json)",
    )  # fmt: skip
    checkpoints: Checkpoints = Field(
        "final", description="final (train/lokr.safetensors), all (every step-NNNNNN "
        "checkpoint and the final), or a list of checkpoint steps; [] = none",
    )  # fmt: skip
    include_base: bool = Field(
        False, description="also sample the base model without the LoKr (label `base`)"
    )
    ema: bool = Field(
        True, description="also sample the EMA weights where the run kept them (train.ema): "
        "`final-ema` (lokr-ema.safetensors) beside `final`, `step-NNNNNN-ema` beside each "
        "chosen checkpoint step",
    )  # fmt: skip
    lokr_weight: float = Field(1.0, description="LoKr multiplier (1 = as trained)")
    apply: Literal["hook", "merge"] = Field(
        "hook", description="hook: the LoKr runs beside the base weights; merge: folded into "
        "them at lokr_weight (faster sampling, the base is reloaded per checkpoint)",
    )  # fmt: skip
    seeds: list[int] = Field(
        [0, 1], min_length=1, description="one picture per prompt and seed, the same seeds for "
        "every checkpoint",
    )  # fmt: skip
    cfg_scale: float = Field(5.0, ge=1, description="classifier-free guidance (recipes: 4-7)")
    guidance_rescale: float | None = Field(
        None, ge=0, le=1, description="CFG rescale (arXiv 2305.08891, eq. 16: the guided "
        "prediction's spread brought back toward the conditional one's, against the over-"
        "exposure of zero-terminal-SNR models); empty = 0.7 (the paper's) for a "
        "zero-terminal-SNR model, 0 (off) otherwise",
    )  # fmt: skip
    steps: int = Field(28, ge=1, description="Euler sampling steps")
    width: int = Field(832, ge=64, description="picture width in pixels (multiple of 8)")
    height: int = Field(1216, ge=64, description="picture height in pixels (multiple of 8)")
    negative_prompt: str = Field("", description="negative prompt of every picture")
    max_tokens: MaxTokens = Field(
        DEFAULT_MAX_TOKENS, description="prompt tokens the text encoders see, in chunks of 75 "
        f"(75, 150, ... {MAX_TOKENS_LIMIT}, as in training); a longer prompt is cut there",
    )  # fmt: skip
    batch_size: int = Field(4, ge=1, description="pictures per sampling batch")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="sampling dtype; auto = fp16 on a GPU (the VAE decodes in fp32), "
        "bf16 on the CPU",
    )  # fmt: skip
    device: str | None = Field(None, description="torch device; empty = cuda when present")
    # scores
    clip_model: Path | None = Field(
        None, description="local CLIP folder (transformers CLIPModel with its tokenizer and "
        "image processor) for the CLIP score; empty = skipped",
    )  # fmt: skip
    ccip_model: Path | None = Field(
        None, description="local CCIP folder (model_feat.onnx, model_metrics.onnx, metrics.json "
        "as in deepghs/ccip_onnx/<model>/) for character fidelity; needs onnxruntime; "
        "empty = skipped",
    )  # fmt: skip
    inception: Path | None = Field(
        None, description="TorchScript feature extractor for FID/KID, e.g. the StyleGAN3 / "
        "clean-fid inception-2015-12-05.pt; empty = skipped",
    )  # fmt: skip
    inception_size: int = Field(299, ge=8, description="square input size of the extractor")
    reference_images: int = Field(
        1000, ge=0, description="dataset images (seeded choice) the pictures are compared with "
        "for FID/KID",
    )  # fmt: skip
    kid_subset_size: int = Field(1000, ge=2, description="KID subset size (capped by the sets)")
    kid_subsets: int = Field(100, ge=1, description="KID subsets averaged")
    # the pictures shown
    grid_prompts: int = Field(12, ge=1, description="prompts in the sample grids (first seed)")
    grid_cell: int = Field(160, ge=32, description="longer side of a grid picture, in pixels")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError(f"evaluate.seeds {seeds} must be distinct and >= 0")
        return seeds

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if self.width % 8 or self.height % 8:
            raise ValueError(f"evaluate width {self.width} and height {self.height} must be "
                             "multiples of 8 (the VAE's scale)")  # fmt: skip
        steps = self.checkpoints if isinstance(self.checkpoints, list) else []
        if len(set(steps)) != len(steps) or min(steps, default=1) < 1:
            raise ValueError(f"evaluate.checkpoints {steps}: distinct steps >= 1")
        if self.characters + self.styles == 0 and not self.quality_probes:
            raise ValueError("evaluate: the prompt set is empty (characters, styles and "
                             "quality_probes are all off)")  # fmt: skip
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`ema` is left out at its default, so that a config written before it keeps its
        JSON form and config hash (as the train config's added fields)."""
        data = handler(self)
        if data.get("ema") is True:
            data.pop("ema")
        return data
