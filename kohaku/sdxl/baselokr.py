"""A base with an earlier LoKr in it (`train.model.lokr`): epsilon rev2 resumed from rev1, a
new LoKr trained on top of base + LoKr.

Reads the LoKr file's header (names, shapes, metadata) and its bytes (sha256), and the
base's configs and headers; never a weight. Writes nothing. `with_base_lokr` checks that
the LoKr merges into the base (a full-matrix kohya-layout LoKr, every module rebuilding a
base weight's shape, not itself trained on top of another LoKr) and that the base can take
its schedule (the merge's rule, `kohaku.sdxl.schedule.combine_schedule`), and returns the
source as base + LoKr: what it predicts, and the LoKr's path, weight and sha256, which the
loaders fold in tensor by tensor (`open_base_lokr`, `kohaku.sdxl.streaming`) and which a
LoKr trained on it records (`kohaku.sdxl.lokr_deltas.META_BASE_LOKR`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kohaku.errors import InputError
from kohaku.sdxl.configs import SDXLConfigs
from kohaku.sdxl.lokr_deltas import LokrDeltas, LokrLayer, diffusers_targets
from kohaku.sdxl.names import UnetLayout
from kohaku.sdxl.schedule import combine_schedule
from kohaku.sdxl.streaming import folder_shapes, sgm_shapes

if TYPE_CHECKING:
    from kohaku.sdxl.parts import ModelSource

SPEC = {"epsilon": "epsilon", "v_prediction": "v"}  # ModelSource's names -> ModelSpec's


def with_base_lokr(source: ModelSource, path: Path, weight: float = 1.0) -> ModelSource:
    """`source` (checked by `check_model_path`) with the LoKr `path` merged into its weights
    at `weight` as they load; one InputError per unfit input, before any tensor is read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"model.lokr {path} does not exist")
    if path.suffix.lower() != ".safetensors":
        raise InputError(f"model.lokr {path}: expected a LoKr .safetensors file")
    assert source.configs is not None, "check the model path first"
    deltas = open_base_lokr(source, source.configs, path, weight)
    try:
        check_single_layer(deltas)
        schedule = combine_schedule(SPEC[source.prediction] if source.declared else None,
                                    source.zero_snr, deltas.prediction, deltas.zero_snr,
                                    f"model.lokr {path}", f"model {source.path}")  # fmt: skip
        declared = source.declared or deltas.prediction is not None
    finally:
        deltas.close()
    return replace(source, lokr=LokrLayer.of(path, weight), declared=declared,
                   prediction="v_prediction" if schedule.prediction == "v" else "epsilon",
                   zero_snr=schedule.zero_snr)  # fmt: skip


def open_base_lokr(source: ModelSource, configs: SDXLConfigs, path: Path,
                   weight: float) -> LokrDeltas:  # fmt: skip
    """The LoKr against the base's tensors, from configs and headers, in the names the
    loaders stream: SGM names for a single file, `<component>/<file key>` for a folder."""
    try:
        if source.kind == "single_file":
            return LokrDeltas(path, sgm_shapes(configs.to_json()), weight)
        shapes = folder_shapes(source.path, configs)
        targets = diffusers_targets(shapes, UnetLayout.from_config(configs.unet))
        return LokrDeltas(path, shapes, weight, targets)
    except InputError as e:
        text = str(e)
        raise InputError(text if text.startswith("model.lokr") else f"model.lokr: {text}") from None


def check_single_layer(deltas: LokrDeltas) -> None:
    """One base LoKr: one trained on top of yet another needs both, which one file holds."""
    record = deltas.base_record
    if record is not None:
        raise InputError(
            f"model.lokr {deltas.file.path} was itself trained on top of LoKr "
            f"{record['file']} (sha256 {record['sha256'][:16]}): export the base with both "
            "(kohaku export --base-lokr <that file> --lokr <this one>) and train on that file"
        )
