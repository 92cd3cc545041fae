"""Picture scores from local models: CLIP score and CCIP character fidelity.

Reads a local CLIP folder (transformers `CLIPModel`, its tokenizer and image processor) and
a local CCIP folder (`model_feat.onnx`, `model_metrics.onnx`, `metrics.json`: the files of
deepghs/ccip_onnx/<model>/ that dghs-imgutils runs) through onnxruntime; writes nothing.
onnxruntime is called directly rather than through dghs-imgutils, whose releases pin
numpy < 2 and pip-install onnxruntime when it is missing (which fails offline).
Nothing is downloaded: a model that is not given, not there or not loadable gives an
`Unavailable` with the reason, which the stage reports as a skipped metric, never a zero.

CLIP score (Hessel et al., arXiv 2104.08718, as torchmetrics computes it):
100 * max(cos(image embedding, text embedding), 0). CCIP (deepghs): a difference between
two pictures of characters, below the model's threshold when they show the same one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
CCIP_FILES = ("model_feat.onnx", "model_metrics.onnx", "metrics.json")
CCIP_SIZE = 384


@dataclass(frozen=True)
class Metric:
    """One aggregated score: `value` when `status` is ok, else the `reason` it was skipped.
    `n` is how many pictures (FID/KID: generated pictures) it summarises."""

    name: str
    status: Literal["ok", "skipped"]
    value: float | None = None
    reason: str | None = None
    n: int = 0
    detail: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def ok(name: str, value: float, n: int, detail: dict | None = None) -> Metric:
    return Metric(name, "ok", float(value), None, n, detail)


def skipped(name: str, reason: str) -> Metric:
    return Metric(name, "skipped", None, reason)


@dataclass(frozen=True)
class Unavailable:
    """A scorer that is not there, and why."""

    reason: str


def _missing(what: str, path: Path | None, field: str) -> Unavailable | None:
    if path is None:
        return Unavailable(f"no {what} given (evaluate.{field})")
    if not Path(path).exists():
        log.warning("evaluate.%s %s does not exist: its metrics are skipped", field, path)
        return Unavailable(f"evaluate.{field} {path} does not exist")
    return None


# ---------------------------------------------------------------------------- CLIP


class ClipScorer:
    """CLIP score of (picture, text) pairs with a local transformers CLIP."""

    def __init__(self, folder: Path, device: str = "cpu"):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.model.to(self.device)
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        self.max_length = self.model.config.text_config.max_position_embeddings

    def score(self, images: Sequence[Image.Image], texts: Sequence[str],
              batch_size: int = 16) -> np.ndarray:  # fmt: skip
        """float64 [N]: the CLIP score of each picture with its text (truncated to CLIP's
        context)."""
        import torch

        out = []
        for start in range(0, len(images), batch_size):
            ims, txt = images[start : start + batch_size], texts[start : start + batch_size]
            inputs = self.processor(text=list(txt), images=[im.convert("RGB") for im in ims],
                                    return_tensors="pt", padding=True, truncation=True,
                                    max_length=self.max_length)  # fmt: skip
            with torch.no_grad():
                emb = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
            # image_embeds and text_embeds come out L2-normalised (transformers 4 and 5)
            cos = (emb.image_embeds * emb.text_embeds).sum(-1)
            out.append((100 * cos.clamp(min=0)).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def load_clip(path: Path | None, device: str = "cpu") -> ClipScorer | Unavailable:
    if (gone := _missing("CLIP model", path, "clip_model")) is not None:
        return gone
    try:
        return ClipScorer(Path(path), device)  # type: ignore[arg-type]
    except (OSError, ValueError) as e:  # transformers' errors for an incomplete folder
        log.warning("CLIP model %s does not load: %s", path, e)
        return Unavailable(f"CLIP model {path} does not load: {e}")


# ---------------------------------------------------------------------------- CCIP


class CharacterScorer(Protocol):
    """What character fidelity needs: features of pictures, and their pairwise differences
    (small = same character; at most `threshold` counts as a match)."""

    threshold: float

    def features(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def differences(self, features: np.ndarray) -> np.ndarray: ...


class CcipScorer:
    """CCIP from its local ONNX files, run by onnxruntime (CUDA when it has it). Pictures
    are prepared as dghs-imgutils does (`imgutils.metrics.ccip`): 384x384 bilinear, then
    CLIP's mean and std; the metric model maps [N, D] features to [N, N] differences."""

    def __init__(self, folder: Path, threads: int | None = None):
        folder = Path(folder)
        self.feat = onnx_session(folder / "model_feat.onnx", threads)
        self.metric = onnx_session(folder / "model_metrics.onnx", threads)
        self.threshold = float(json.loads((folder / "metrics.json").read_text())["threshold"])

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        data = np.stack([ccip_input(im) for im in images])
        (out,) = self.feat.run(["output"], {"input": data})
        return np.asarray(out, dtype=np.float32)

    def differences(self, features: np.ndarray) -> np.ndarray:
        (out,) = self.metric.run(["output"], {"input": features.astype(np.float32)})
        return np.asarray(out, dtype=np.float64)


def onnx_session(path: Path, threads: int | None = None):
    """An onnxruntime session on CUDA when this onnxruntime has it, else the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                 if p in ort.get_available_providers()]  # fmt: skip
    return ort.InferenceSession(str(path), options, providers=providers)


def ccip_input(image: Image.Image, size: int = CCIP_SIZE) -> np.ndarray:
    data = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
    return ((data / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy()


def load_ccip(path: Path | None, threads: int | None = None) -> CcipScorer | Unavailable:
    if (gone := _missing("CCIP model", path, "ccip_model")) is not None:
        return gone
    if importlib.util.find_spec("onnxruntime") is None:
        return Unavailable("onnxruntime is not installed (pip install onnxruntime, or "
                           "onnxruntime-gpu; dghs-imgutils brings it too)")  # fmt: skip
    lacking = [f for f in CCIP_FILES if not (Path(path) / f).is_file()]  # type: ignore[arg-type]
    if lacking:
        return Unavailable(f"CCIP folder {path} lacks {', '.join(lacking)}")
    try:
        return CcipScorer(Path(path), threads)  # type: ignore[arg-type]
    except Exception as e:  # onnxruntime raises its own error types
        log.warning("CCIP model %s does not load: %s", path, e)
        return Unavailable(f"CCIP model {path} does not load: {e}")


@dataclass(frozen=True)
class Fidelity:
    """Per generated picture: the mean CCIP difference to the character's references and
    the share of references it matches (difference <= threshold)."""

    difference: np.ndarray  # float64 [G]
    match: np.ndarray  # float64 [G]


def character_fidelity(
    scorer: CharacterScorer, generated: np.ndarray, references: np.ndarray
) -> Fidelity:
    """Features of one character's generated pictures [G, D] against its references [R, D]."""
    diff = scorer.differences(np.concatenate([generated, references]))
    block = diff[: len(generated), len(generated) :]
    return Fidelity(block.mean(1), (block <= scorer.threshold).mean(1))


@dataclass(frozen=True)
class Summary:
    """A checkpoint's aggregated scores."""

    label: str
    step: int | None
    metrics: tuple[Metric, ...]

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def as_dict(self) -> dict:
        return {"label": self.label, "step": self.step,
                "metrics": [m.as_dict() for m in self.metrics]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> Summary:
        metrics = tuple(Metric(**m) for m in data["metrics"])
        return cls(data["label"], data["step"], metrics)
