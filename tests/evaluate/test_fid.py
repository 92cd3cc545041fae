"""FID / KID math on known inputs, and a TorchScript stand-in for the Inception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kohaku.evaluate.fid import (
    extract,
    fid,
    frechet_distance,
    kid,
    load_extractor,
    mmd2_unbiased,
    sqrtm_psd,
)


def features(n: int = 200, d: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) @ mix.double()


def test_sqrtm_of_a_psd_matrix() -> None:
    a = features(10, 4)
    psd = a.T @ a
    root = sqrtm_psd(psd)
    assert torch.allclose(root @ root, psd, atol=1e-8) and torch.allclose(root, root.T)
    singular = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # eigenvalues 2, 0
    assert torch.allclose(sqrtm_psd(singular) @ sqrtm_psd(singular), singular, atol=1e-12)


def test_fid_of_identical_sets_is_zero_and_of_shifted_sets_the_squared_shift() -> None:
    x = features()
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 0, 2, 0, 0, 0], dtype=torch.float64)
    assert fid(x, x + shift) == pytest.approx(5.0, rel=1e-6)  # same covariance: |mu1 - mu2|^2
    assert fid(x, 2 * x) > 0 and fid(x, features(seed=1)) > 0


def test_frechet_distance_of_gaussians_in_closed_form() -> None:
    """Diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2 plus the mean term."""
    mu1, mu2 = torch.zeros(3), torch.tensor([1.0, 2.0, 0.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0, 9.0])), torch.diag(torch.tensor([4.0, 4.0, 1.0]))
    expected = 5.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_mmd_on_known_inputs() -> None:
    """1-D features: k(x, y) = (x y + 1)^3. x = {0, 1}, y = {1, 2}:
    k_xx off-diagonal = k(0, 1) = 1; k_yy off-diagonal = k(1, 2) = 27;
    k_xy = k(0,1), k(0,2), k(1,1), k(1,2) = 1, 1, 8, 27 -> mean 37/4.
    MMD^2 = 2/2 + 54/2 - 2 * 37/4 = 9.5."""
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[1.0], [2.0]])
    assert mmd2_unbiased(x, y) == pytest.approx(9.5)
    result = kid(x, y, subsets=10, subset_size=100)
    assert result.mean == pytest.approx(9.5) and result.subsets == 1 and result.std == 0.0


def test_kid_over_subsets() -> None:
    x, y = features(seed=0), features(seed=1)
    same = kid(x, x, subsets=1, subset_size=200)
    assert same.mean == pytest.approx(mmd2_unbiased(x, x))
    shifted = kid(x, x + 3.0, subsets=20, subset_size=50)
    near = kid(x, y, subsets=20, subset_size=50)
    assert shifted.mean > near.mean and shifted.subset_size == 50 and shifted.std > 0
    assert kid(x, y, subsets=20, subset_size=50) == near  # seeded subsets
    with pytest.raises(ValueError, match=">= 2 features"):
        kid(x[:1], y)


def test_torchscript_extractor_on_pictures(tiny_extractor: Path, tmp_path: Path) -> None:
    ext = load_extractor(tiny_extractor, size=32)
    assert ext.kwargs == {"return_features": True}
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
                for _ in range(6)]  # fmt: skip
    path = tmp_path / "p.png"
    pictures[0].save(path)
    feats = extract(ext, [*pictures, path], batch_size=4)
    assert feats.shape == (7, 8) and torch.allclose(feats[0], feats[6])
    assert fid(feats[:6], feats[:6]) == pytest.approx(0.0, abs=1e-6)
    bright = [Image.fromarray(np.clip(np.asarray(p, dtype=np.int16) + 80, 0, 255)
                              .astype(np.uint8)) for p in pictures]  # fmt: skip
    assert fid(feats[:6], extract(ext, bright)) > 1e-4


def test_extractor_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_extractor(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        load_extractor(bad)
