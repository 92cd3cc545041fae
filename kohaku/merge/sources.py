"""Merge inputs in one key space: the SGM single-file names (`model.diffusion_model.*`, ...).

Reads an SGM single-file `.safetensors` checkpoint (its own key space, as it is) or a
diffusers SDXL folder (the four models' configs and safetensors headers; their names are
mapped to SGM names by `kohaku.sdxl.layout.sgm_state`, run on lazy tensors so that no
weight is read; `open_components` keeps them in the folder's own names). Writes nothing.
Every tensor is read only when asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from kohaku.errors import InputError
from kohaku.sdxl.layout import sgm_state
from kohaku.sdxl.lokr import META_ZERO_SNR
from kohaku.sdxl.tensors import Lazy, TensorFile

PICKLE_SUFFIXES = {".ckpt", ".pt", ".bin", ".pth"}
COMPONENTS = {  # diffusers folder -> the weights file its loader looks for first
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
}


@dataclass
class ModelTensors:
    """One input model: SGM name -> lazy tensor, and the files to close when done."""

    name: str
    path: Path
    tensors: dict[str, Lazy]
    metadata: dict[str, str] = field(default_factory=dict)
    files: list[TensorFile] = field(default_factory=list)

    def close(self) -> None:
        for f in self.files:
            f.close()


def open_model(name: str, path: Path) -> ModelTensors:
    """A single-file checkpoint or a diffusers folder, by what `path` is."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"model {name}: {path} does not exist")
    if path.is_dir():
        return open_diffusers(name, path)
    return open_single_file(name, path)


def open_single_file(name: str, path: Path) -> ModelTensors:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InputError(
            f"model {name}: {path} is a pickle checkpoint ({suffix}); loading it "
            "can run code: convert it to .safetensors first"
        )
    if suffix != ".safetensors":
        raise InputError(f"model {name}: {path} is neither a .safetensors file nor a folder")
    file = TensorFile(path)
    tensors = {k: Lazy.of(file, k) for k in file.header.specs}
    return ModelTensors(name, path, tensors, file.header.metadata, [file])


# ---------------------------------------------------------------------------- diffusers


class Component:
    """One model of a diffusers folder (what `sgm_state` asks of a model: `state_dict()` and
    `config`), its tensors lazy."""

    def __init__(self, state: dict[str, Lazy], config: SimpleNamespace):
        self._state, self.config = state, config

    def state_dict(self) -> dict[str, Lazy]:
        return dict(self._state)


def open_diffusers(name: str, path: Path) -> ModelTensors:
    """The UNet, VAE and both text encoders of a diffusers folder under their SGM names."""
    components, files = open_components(name, path)
    with _closed_on_error(name, path, files):
        tensors = sgm_state(components)  # type: ignore[arg-type]  (duck-typed modules)
    return ModelTensors(name, path, tensors, diffusers_metadata(path), files)


@contextmanager
def _closed_on_error(name: str, path: Path, files: list[TensorFile]) -> Iterator[None]:
    """On an error the files are closed; a malformed folder is bad input (InputError)."""
    try:
        yield
    except Exception as e:
        for f in files:
            f.close()
        if isinstance(e, InputError) or not isinstance(e, ValueError | KeyError | AttributeError):
            raise
        raise InputError(
            f"model {name}: {path} is not a diffusers SDXL folder whose names map to the "
            f"SGM layout: {e}"
        ) from e


def open_components(name: str, path: Path) -> tuple[dict[str, Component], list[TensorFile]]:
    """The UNet, VAE and both text encoders of a diffusers folder in their own names, and
    the files to close when done."""
    files: list[TensorFile] = []
    with _closed_on_error(name, path, files):
        components = {c: _open_component(name, path / c, files) for c in COMPONENTS}
    return components, files


def diffusers_metadata(path: Path) -> dict[str, str]:
    """What a folder says in ModelSpec terms: its scheduler's prediction type, if set; and
    under sd-scripts' name whether its betas are rescaled to zero terminal SNR."""
    scheduler = path / "scheduler" / "scheduler_config.json"
    if not scheduler.is_file():
        return {}
    config = json.loads(scheduler.read_text())
    spec = {"epsilon": "epsilon", "v_prediction": "v"}.get(config.get("prediction_type") or "")
    zero = {META_ZERO_SNR: "True"} if config.get("rescale_betas_zero_snr") else {}
    return ({"modelspec.prediction_type": spec} if spec else {}) | zero


def _open_component(name: str, folder: Path, files: list[TensorFile]) -> Component:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"model {name}: {config_path} is missing")
    config = SimpleNamespace(**json.loads(config_path.read_text()))
    state: dict[str, Lazy] = {}
    for weights in _weight_files(name, folder):
        file = TensorFile(weights)
        files.append(file)
        state |= {k: Lazy.of(file, k) for k in file.header.specs}
    return Component(state, config)


def _weight_files(name: str, folder: Path) -> list[Path]:
    """The plain weights file, else the shards of a `*.safetensors.index.json`, else the
    only `*.safetensors` there (a variant such as `*.fp16.safetensors`)."""
    plain = folder / COMPONENTS[folder.name]
    if plain.is_file():
        return [plain]
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        shards = json.loads(indexes[0].read_text())["weight_map"].values()
        return [folder / s for s in sorted(set(shards))]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise InputError(
            f"model {name}: {folder} has {len(found)} safetensors files "
            f"({[p.name for p in found]}); expected {plain.name}"
        )
    return found
