"""Text-encoder embeddings: the token and position tables of both CLIP encoders, read
alone from a reference model and copied into loaded ones (`restore_embeddings_from`).

Reads just those 4 tensors: by SGM name from a single file (any file that holds them), by
transformers name from a diffusers folder's text-encoder files, or from an allowed pickle.
Writes nothing: the tables are copied into the loaded models in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from kohaku.errors import InputError
from kohaku.sdxl import layout
from kohaku.sdxl.layout import PARTS
from kohaku.sdxl.streaming import check_single_file_suffix, open_tensors, weight_files
from kohaku.sdxl.tensors import read_header

if TYPE_CHECKING:
    from kohaku.sdxl.parts import SDXLParts

TABLES = ("token_embedding", "position_embedding")
Embeddings = dict[str, dict[str, torch.Tensor]]  # text encoder -> table -> weight


def embedding_keys(kind: Literal["diffusers", "single_file"]) -> dict[tuple[str, str], str]:
    """(text encoder, table) -> tensor name: SGM names in a single file, transformers names
    in each text encoder's own file of a folder."""
    out = {}
    for model in ("text_encoder", "text_encoder_2"):
        for table in TABLES:
            full = f"text_model.embeddings.{table}.weight"
            sgm = layout.OPENCLIP_TOP.get(full, full) if model == "text_encoder_2" else full
            out[(model, table)] = full if kind == "diffusers" else PARTS[model] + sgm
    return out


def locate_embeddings(path: Path, allow_pickle: bool = False) -> dict[tuple[str, str], tuple]:
    """Where the 4 embedding tables of a reference model are: (file, name) each, from
    headers only; `InputError` when one is missing."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"restore_embeddings_from: {path} does not exist")
    if path.is_dir():
        found = {}
        for (model, table), name in embedding_keys("diffusers").items():
            for file in weight_files(path / model):
                specs = read_header(file).specs
                for alt in (name, name.removeprefix("text_model.")):  # transformers 4 or 5
                    if alt in specs:
                        found[(model, table)] = (file, alt)
    elif check_single_file_suffix(path, allow_pickle) == "pickle":  # keys known on load
        return {k: (path, n) for k, n in embedding_keys("single_file").items()}
    else:  # any SGM file holding the 4 tables: they are all that is read
        specs = read_header(path).specs
        found = {k: (path, n) for k, n in embedding_keys("single_file").items() if n in specs}
    missing = [f"{m} {t}" for m in ("text_encoder", "text_encoder_2") for t in TABLES
               if (m, t) not in found]  # fmt: skip
    if missing:
        raise InputError(f"restore_embeddings_from: {path} lacks the {', '.join(missing)} "
                         "tensors")  # fmt: skip
    return found


def read_embeddings(path: Path, allow_pickle: bool = False) -> Embeddings:
    """Just the 4 embedding tables of a reference model (never the whole model)."""
    out: Embeddings = {"text_encoder": {}, "text_encoder_2": {}}
    for (model, table), (file, name) in locate_embeddings(path, allow_pickle).items():
        with open_tensors(file) as tensors:
            out[model][table] = tensors.read(name).clone()
    return out


def text_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """The token + position embedding module, wherever this transformers version puts it."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "embeddings" and hasattr(module, "token_embedding"):
            return module
    raise ValueError(f"{type(model).__name__} has no text embeddings module")


def embeddings_of(parts: SDXLParts) -> Embeddings:
    """The 4 embedding tables of loaded parts."""
    return {name: {t: getattr(text_embeddings(getattr(parts, name)), t).weight for t in TABLES}
            for name in ("text_encoder", "text_encoder_2")}  # fmt: skip


@torch.no_grad()
def restore_embeddings(parts: SDXLParts, reference: Embeddings) -> None:
    """Copy both text encoders' token and position embeddings from `reference`, in place."""
    for name in ("text_encoder", "text_encoder_2"):
        dst = text_embeddings(getattr(parts, name))
        for table in TABLES:
            d, s = getattr(dst, table).weight, reference[name][table]
            if d.shape != s.shape:
                raise InputError(f"{name} {table}: reference {tuple(s.shape)} != {tuple(d.shape)}")
            d.copy_(s.to(device=d.device, dtype=d.dtype))
