"""Scoring a checkpoint's pictures: CLIP score, CCIP character fidelity, FID and KID.

Reads the pictures of `<run>/evaluate/<label>/images/`, the reference pictures named by
`<run>/buckets/manifest.parquet` and the score models (`kohaku.evaluate.scores`,
`kohaku.evaluate.fid`). Writes nothing. Reference features are computed once per stage run
and shared by every checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from kohaku.evaluate import fid as fidlib
from kohaku.evaluate.config import EvaluateConfig
from kohaku.evaluate.prompts import PromptSet
from kohaku.evaluate.scores import (
    CharacterScorer,
    ClipScorer,
    Metric,
    Unavailable,
    character_fidelity,
    load_ccip,
    load_clip,
    ok,
    skipped,
)
from kohaku.sample import sample_key
from kohaku.stage import fingerprint, sha256_bytes

log = logging.getLogger(__name__)
REFERENCE_SEED = 0  # the seeded choice of FID/KID reference pictures
SCORE_VERSION = "1"
CHUNK = 16  # pictures open at once


@dataclass
class Scorers:
    """The score models (or why each is unavailable) and the reference pictures."""

    clip: ClipScorer | Unavailable
    ccip: CharacterScorer | Unavailable
    extractor: fidlib.FeatureExtractor | Unavailable
    references: list[Path]  # FID/KID reference pictures
    character_refs: dict[int, Path]  # post id -> picture, CCIP references
    key: str  # what the scores depend on besides the pictures
    kid_subsets: tuple[int, int] = (100, 1000)  # KID: how many, of what size
    _ref_features: torch.Tensor | None = None
    _ccip_features: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def load(cls, cfg: EvaluateConfig, run_dir: Path, prompts: PromptSet) -> Scorers:
        from kohaku.evaluate.generate import resolve_device

        device = str(resolve_device(cfg))
        images = _existing(Path(run_dir), bucket_images(Path(run_dir)))
        chosen = choose_references(images, cfg.reference_images)
        wanted = {i for refs in prompts.frame["references"].to_list() for i in refs}
        char_refs = {int(i): Path(run_dir) / p for i, p in images.rows() if i in wanted}
        key = score_key(cfg, chosen, char_refs)
        return cls(load_clip(cfg.clip_model, device), load_ccip(cfg.ccip_model),
                   _extractor(cfg, device), [Path(run_dir) / x for x in chosen["path"]],
                   char_refs, key, (cfg.kid_subsets, cfg.kid_subset_size))  # fmt: skip

    def reference_features(self) -> torch.Tensor:
        assert not isinstance(self.extractor, Unavailable)
        if self._ref_features is None:
            self._ref_features = fidlib.extract(self.extractor, self.references)
        return self._ref_features

    def ccip_features(self, ids: list[int]) -> np.ndarray:
        assert not isinstance(self.ccip, Unavailable)
        new = [i for i in ids if i not in self._ccip_features]
        if new:
            feats = self.ccip.features([_open(self.character_refs[i]) for i in new])
            self._ccip_features |= dict(zip(new, feats, strict=True))
        return np.stack([self._ccip_features[i] for i in ids])


def bucket_images(run_dir: Path) -> pl.DataFrame:
    """(id, path) of the run's training pictures; empty without a buckets stage."""
    path = run_dir / "buckets" / "manifest.parquet"
    if not path.is_file():
        return pl.DataFrame(schema={"id": pl.Int64, "path": pl.String})
    return pl.read_parquet(path, columns=["id", "path"]).sort("id")


def _existing(run_dir: Path, images: pl.DataFrame) -> pl.DataFrame:
    exists = [(run_dir / p).is_file() for p in images["path"]]
    return images.filter(pl.Series(exists, dtype=pl.Boolean))


def choose_references(images: pl.DataFrame, n: int) -> pl.DataFrame:
    """`n` of the (id, path) rows, chosen by the seeded key of their id (stable across
    machines and library versions, `kohaku.sample.keys`)."""
    if images.is_empty() or n == 0:
        return images.head(0)
    keys = sample_key(images["id"].to_numpy(), REFERENCE_SEED)
    keyed = images.with_columns(_key=pl.Series(keys.astype(np.int64)))
    return keyed.sort("_key", "id").head(n).drop("_key")


def score_key(cfg: EvaluateConfig, references: pl.DataFrame, char_refs: dict[int, Path]) -> str:
    def model(path: Path | None) -> object:
        return fingerprint(path).model_dump() if path is not None and path.exists() else None

    parts = {
        "version": SCORE_VERSION, "clip": model(cfg.clip_model), "ccip": model(cfg.ccip_model),
        "onnxruntime": importlib.util.find_spec("onnxruntime") is not None,
        "inception": model(cfg.inception), "inception_size": cfg.inception_size,
        "kid": [cfg.kid_subsets, cfg.kid_subset_size],
        "references": references["id"].to_list(), "character_refs": sorted(char_refs),
    }  # fmt: skip
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())[:16]


def _extractor(cfg: EvaluateConfig, device: str) -> fidlib.FeatureExtractor | Unavailable:
    if cfg.inception is None:
        return Unavailable("no Inception (feature extractor) given (evaluate.inception)")
    if not cfg.inception.is_file():
        log.warning("evaluate.inception %s does not exist: FID/KID are skipped", cfg.inception)
        return Unavailable(f"evaluate.inception {cfg.inception} does not exist")
    try:
        return fidlib.load_extractor(cfg.inception, cfg.inception_size, device)
    except (ValueError, RuntimeError) as e:
        log.warning("evaluate.inception %s does not load: %s", cfg.inception, e)
        return Unavailable(f"evaluate.inception {cfg.inception} does not load: {e}")


# ---------------------------------------------------------------------------- scoring


def score_pictures(pictures: pl.DataFrame, folder: Path,
                   scorers: Scorers) -> tuple[pl.DataFrame, list[Metric]]:  # fmt: skip
    """Per-picture scores (None where a score does not apply or is skipped) and the
    aggregated metrics. `pictures` has prompt_id, kind, tag, text, references, seed, image
    (relative to `folder`)."""
    frame = pictures.select("prompt_id", "kind", "tag", "seed", "image")
    paths = [folder / x for x in pictures["image"]]
    clip, clip_metric = clip_scores(scorers, paths, pictures)
    ccip, ccip_metrics = ccip_scores(scorers, paths, pictures)
    frame = frame.with_columns(
        pl.Series("clip_score", clip, dtype=pl.Float64),
        pl.Series("ccip_difference", ccip[0], dtype=pl.Float64),
        pl.Series("ccip_match", ccip[1], dtype=pl.Float64),
    )
    return frame, [clip_metric, *ccip_metrics, *fid_scores(scorers, paths)]


def clip_scores(scorers: Scorers, paths: list[Path],
                pictures: pl.DataFrame) -> tuple[list[float | None], Metric]:  # fmt: skip
    if isinstance(scorers.clip, Unavailable):
        return [None] * len(paths), skipped("clip_score", scorers.clip.reason)
    texts, values = pictures["text"].to_list(), []
    for start in range(0, len(paths), CHUNK):
        images = [_open(p) for p in paths[start : start + CHUNK]]
        values.extend(scorers.clip.score(images, texts[start : start + CHUNK]).tolist())
    by_kind = pl.DataFrame({"kind": pictures["kind"], "v": values}).group_by("kind").mean()
    detail = {"by_kind": dict(sorted(by_kind.rows()))}
    return values, ok("clip_score", float(np.mean(values)), len(values), detail)


def ccip_scores(scorers: Scorers, paths: list[Path], pictures: pl.DataFrame) -> tuple[
        tuple[list[float | None], list[float | None]], list[Metric]]:  # fmt: skip
    n = len(paths)
    diff: list[float | None] = [None] * n
    match: list[float | None] = [None] * n
    names = ("ccip_difference", "ccip_match")
    if isinstance(scorers.ccip, Unavailable):
        return (diff, match), [skipped(x, scorers.ccip.reason) for x in names]
    characters = 0
    rows = pictures.with_row_index("row").filter(pl.col("kind") == "character")
    for _, group in rows.group_by("prompt_id", maintain_order=True):
        refs = [int(i) for i in group["references"][0] if int(i) in scorers.character_refs]
        if not refs:
            continue
        idx = group["row"].to_list()
        feats = scorers.ccip.features([_open(paths[i]) for i in idx])
        fidelity = character_fidelity(scorers.ccip, feats, scorers.ccip_features(refs))
        for j, i in enumerate(idx):
            diff[i], match[i] = float(fidelity.difference[j]), float(fidelity.match[j])
        characters += 1
    scored = [i for i in range(n) if diff[i] is not None]
    if not scored:
        reason = "no character prompt has reference pictures (buckets manifest)"
        return (diff, match), [skipped(x, reason) for x in names]
    detail = {"characters": characters, "threshold": scorers.ccip.threshold}
    metrics = [
        ok(names[0], float(np.mean([diff[i] for i in scored])), len(scored), detail),
        ok(names[1], float(np.mean([match[i] for i in scored])), len(scored), detail),
    ]
    return (diff, match), metrics


def fid_scores(scorers: Scorers, paths: list[Path]) -> list[Metric]:
    if isinstance(scorers.extractor, Unavailable):
        return [skipped(x, scorers.extractor.reason) for x in ("fid", "kid")]
    if len(scorers.references) < 2 or len(paths) < 2:
        reason = (f"FID/KID need >= 2 pictures per set: {len(paths)} generated, "
                  f"{len(scorers.references)} references (buckets manifest)")  # fmt: skip
        return [skipped(x, reason) for x in ("fid", "kid")]
    gen = fidlib.extract(scorers.extractor, paths)
    ref = scorers.reference_features()
    subsets, size = scorers.kid_subsets
    k = fidlib.kid(gen, ref, subsets, size)
    detail = {"references": ref.shape[0], "features": ref.shape[1]}
    return [ok("fid", fidlib.fid(gen, ref), len(paths), detail),
            ok("kid", k.mean, len(paths), detail | {"std": k.std, "subsets": k.subsets,
                                                   "subset_size": k.subset_size})]  # fmt: skip


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")
