"""The reference a streamed LoKr merge is checked against: lycoris' own `merge_to` on the
whole base model loaded in float32 (what `[train.export]` did before it was streamed)."""

from __future__ import annotations

from pathlib import Path


def lycoris_merged(base_dir: Path, lokr_file: Path):
    """The diffusers folder `base_dir` loaded whole, the LoKr attached, loaded and merged
    by lycoris: `SDXLParts` with merged weights."""
    from kohaku.sdxl import lokr
    from kohaku.sdxl.model import check_model_path, load_sdxl

    parts = load_sdxl(check_model_path(base_dir))
    preset, components = lokr.read_recipe(lokr_file)
    adapters = lokr.attach(preset, {c: getattr(parts, c) for c in components}, seed=0)
    lokr.load_into(adapters, lokr_file)
    lokr.merge(adapters)
    return parts
