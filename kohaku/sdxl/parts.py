"""What the SDXL loaders return: a checked model path and what it holds (`ModelSource`),
and the loaded parts (`SDXLParts`). Plain dataclasses; reads and writes nothing. Kept apart
from `model` so that the modules `model` calls (`baselokr`, `embeddings`, `saving`) can
name them without importing it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kohaku.sdxl.configs import SDXLConfigs
from kohaku.sdxl.lokr_deltas import LokrLayer

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

Prediction = Literal["epsilon", "v_prediction"]


@dataclass
class SDXLParts:
    """The seven parts of SDXL as loaded torch modules, tokenizers and the training scheduler."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    base_lokr: LokrLayer | None = None  # merged into the weights as they loaded

    @property
    def prediction(self) -> Prediction:
        """What the UNet predicts: `epsilon` or `v_prediction` (from its schedule)."""
        return self.noise_scheduler.config.prediction_type

    def trained_on(self) -> dict[str, str]:
        """The metadata of a LoKr trained on these weights: the base LoKr they hold, if any."""
        return {} if self.base_lokr is None else self.base_lokr.metadata()


@dataclass(frozen=True)
class ModelSource:
    """A checked model path: a diffusers folder, or a single file (with its config folder
    when one was given), what the model predicts, and its resolved configs."""

    path: Path
    kind: Literal["diffusers", "single_file"]
    config_dir: Path | None = None
    allow_pickle: bool = False
    prediction: Prediction = "epsilon"
    zero_snr: bool = False
    # False: nothing in or beside the file says what it predicts (SDXL 1.0's epsilon assumed)
    declared: bool = True
    configs: SDXLConfigs | None = field(default=None, compare=False, repr=False)
    lokr: LokrLayer | None = None  # merged into the weights as they load (`check_model`)
