"""FID and KID between two sets of image features, and the feature extractors that make them.

Reads a local TorchScript feature extractor (`load_extractor`; e.g. the Inception of
StyleGAN3 / clean-fid, `inception-2015-12-05.pt`); writes nothing.

FID (Heusel et al., arXiv 1706.08500): |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2).
tr((S1 S2)^1/2) = tr((A S2 A)^1/2) with A = S1^1/2, and A S2 A is symmetric positive
semi-definite, so both square roots come from `torch.linalg.eigh` (no scipy `sqrtm`).
KID (Binkowski et al., arXiv 1801.01401): the unbiased MMD^2 with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class FeatureExtractor(Protocol):
    """Images -> features. `images` are float [B, 3, H, W] in [0, 1], any size; the
    extractor resizes them itself. Returns float [B, D]."""

    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class KID:
    mean: float
    std: float
    subsets: int
    subset_size: int


# ---------------------------------------------------------------------------- math


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The square root of a symmetric positive semi-definite matrix (negative eigenvalues
    from rounding are clipped to 0)."""
    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def mean_cov(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (float64) of [N, D] features, N >= 2."""
    x = features.double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need [N >= 2, D] features, got {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> float:
    root = sqrtm_psd(cov1.double())
    cross = torch.linalg.eigvalsh(root @ cov2.double() @ root).clamp(min=0).sqrt().sum()
    diff = mu1.double() - mu2.double()
    value = diff @ diff + torch.trace(cov1.double()) + torch.trace(cov2.double()) - 2 * cross
    return max(float(value), 0.0)


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID of two feature sets [N, D], [M, D]."""
    return frechet_distance(*mean_cov(a), *mean_cov(b))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel; x [m, D], y [n, D], m, n >= 2."""
    x, y = x.double(), y.double()
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sum_xx = kxx.sum() - kxx.diagonal().sum()
    sum_yy = kyy.sum() - kyy.diagonal().sum()
    return float(sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * kxy.mean())


def kid(a: torch.Tensor, b: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> KID:  # fmt: skip
    """KID of two feature sets: MMD^2 over `subsets` random subsets of `subset_size` (capped
    by the smaller set; with a set that small, every subset is the whole sets and one is
    computed). Subsets are drawn with a seeded generator."""
    size = min(subset_size, a.shape[0], b.shape[0])
    if size < 2:
        raise ValueError(f"KID needs >= 2 features per set, got {a.shape[0]} and {b.shape[0]}")
    if size == a.shape[0] == b.shape[0]:
        subsets = 1
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor([
        mmd2_unbiased(a[torch.randperm(a.shape[0], generator=gen)[:size]],
                      b[torch.randperm(b.shape[0], generator=gen)[:size]])
        for _ in range(subsets)
    ], dtype=torch.float64)  # fmt: skip
    std = float(values.std()) if subsets > 1 else 0.0
    return KID(float(values.mean()), std, subsets, size)


# ---------------------------------------------------------------------------- extractors


class TorchScriptExtractor:
    """A TorchScript module as a `FeatureExtractor`: pictures resized (bicubic, antialiased)
    to `size` x `size`, scaled to [0, 255] as the FID Inceptions expect, and passed with
    `return_features=True` when the module's forward takes it (StyleGAN3 / clean-fid)."""

    def __init__(self, path: Path, size: int = 299, device: str = "cpu"):
        self.path, self.size, self.device = Path(path), size, torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()
        names = [a.name for a in self.module.forward.schema.arguments]
        self.kwargs = {"return_features": True} if "return_features" in names else {}
        self.name = f"torchscript:{self.path.name}:{size}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, (self.size, self.size), mode="bicubic", antialias=True)
        out = self.module(x.clamp(0, 1) * 255, **self.kwargs)
        return out.reshape(out.shape[0], -1).float().cpu()


def load_extractor(path: Path, size: int = 299, device: str = "cpu") -> TorchScriptExtractor:
    """A local TorchScript extractor; ValueError with what to fix when it cannot load."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return TorchScriptExtractor(path, size, device)
    except RuntimeError as e:  # torch.jit.load's error for a non-TorchScript file
        raise ValueError(f"{path} is not a TorchScript module ({e}); export the extractor "
                         "with torch.jit.script or torch.jit.trace") from e  # fmt: skip


def extract(extractor: FeatureExtractor, images: Sequence[Image.Image | Path],
            batch_size: int = 32) -> torch.Tensor:  # fmt: skip
    """Features [N, D] of pictures (PIL images, or paths opened a batch at a time), in the
    input order; each batch holds pictures of one size."""
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    sizes = [_size(im) for im in images]
    for i, size in enumerate(sizes):
        by_size[size].append(i)
    rows: list[torch.Tensor | None] = [None] * len(images)
    for size in sorted(by_size):
        ids = by_size[size]
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            feats = extractor(to_tensor([_open(images[i]) for i in chunk]))
            for i, row in zip(chunk, feats, strict=True):
                rows[i] = row
    return torch.stack(rows) if rows else torch.empty(0, 0)  # type: ignore[arg-type]


def _size(image: Image.Image | Path) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size
    with Image.open(image) as im:
        return im.size


def _open(image: Image.Image | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Same-size RGB images -> float [B, 3, H, W] in [0, 1]."""
    arrays = np.stack([np.asarray(im) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255.0
