"""Merge recipes: which models, what arithmetic, which extras (MBW, embeddings, a LoKr).

Reads a recipe TOML (paths relative to its folder). Writes nothing. The expression is
parsed with `ast` and reduced to one coefficient per model (`beta7 + 0.8 * (anxl3 - anxl2)`
-> {beta7: 1.0, anxl3: 0.8, anxl2: -0.8}); nothing is evaluated. Pure: no torch here.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kohaku.errors import ConfigError

Storage = Literal["fp32", "fp16", "bf16", "fp8"]
Coefficients = dict[str, float]  # model name -> weight of its tensors in the sum
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class MbwWeights(BaseModel):
    """Per-block weights: each UNet block gets `base + w * (expression - base)`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    base: str = Field(description="the model the blocks blend from (a name in [models])")
    input: list[float] = Field(description="one weight per UNet input block (SDXL: 9)")
    middle: float = Field(description="the weight of the UNet middle block")
    output: list[float] = Field(description="one weight per UNet output block (SDXL: 9)")
    other: float = Field(
        1.0,
        description="the weight of every other tensor: UNet time/label embeddings and "
        "out layers, the VAE and the text encoders (1.0: the expression as it is)",
    )


class LokrMerge(BaseModel):
    """A kohaku LoKr file folded into the merged tensors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    file: Path = Field(description="LoKr .safetensors with kohya-layout names")
    weight: float = Field(1.0, description="multiplier of the LoKr's weight delta")


class MergeRecipe(BaseModel):
    """One merge: `output = expression` per tensor, with the options below."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    models: dict[str, Path] = Field(
        min_length=1, description="name -> SGM single-file .safetensors or diffusers folder"
    )
    expression: str = Field(description="weighted sums and differences of the model names")
    output: Path = Field(description="the merged SGM single-file .safetensors to write")
    dtype: Storage = Field("fp16", description="storage of the output's float tensors")
    restore_embeddings_from: str | None = Field(
        None,
        description="copy both text encoders' token and position embeddings from this "
        "model (a name in [models]) instead of merging them",
    )
    mbw: MbwWeights | None = Field(None, description="per-block weights (optional)")
    lokr: LokrMerge | list[LokrMerge] | None = Field(
        None, description="a LoKr to merge in, or several ([[lokr]]) folded in in order: "
        "an earlier LoKr, then one trained on top of it (optional)",
    )  # fmt: skip

    @field_validator("models")
    @classmethod
    def _names_are_identifiers(cls, models: dict[str, Path]) -> dict[str, Path]:
        bad = [n for n in models if not NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"model names must be identifiers (letters, digits, _): {bad}")
        return models

    @model_validator(mode="after")
    def _names_are_known(self) -> MergeRecipe:
        parse_expression(self.expression, set(self.models))
        for field, name in (
            ("restore_embeddings_from", self.restore_embeddings_from),
            ("mbw.base", self.mbw.base if self.mbw else None),
        ):
            if name is not None and name not in self.models:
                raise ValueError(f"{field} = {name!r} is not in [models] ({sorted(self.models)})")
        return self

    def coefficients(self) -> Coefficients:
        return parse_expression(self.expression, set(self.models))

    @property
    def lokrs(self) -> list[LokrMerge]:
        """The LoKrs to fold in, in order."""
        if self.lokr is None:
            return []
        return list(self.lokr) if isinstance(self.lokr, list) else [self.lokr]


def load_recipe(path: Path) -> MergeRecipe:
    """A recipe TOML; relative paths are taken from the recipe's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read merge recipe {path}: {e}") from e
    if isinstance(data.get("models"), dict):
        data["models"] = {k: _near(path, v) for k, v in data["models"].items()}
    if "output" in data:
        data["output"] = _near(path, data["output"])
    lokrs = data.get("lokr")
    for lokr in lokrs if isinstance(lokrs, list) else [lokrs]:
        if isinstance(lokr, dict) and "file" in lokr:
            lokr["file"] = _near(path, lokr["file"])
    try:
        return MergeRecipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"merge recipe {path}: {e}") from e


def _near(recipe: Path, value: object) -> object:
    """A path string relative to the recipe's folder (anything else is left to validation)."""
    return recipe.parent / Path(value).expanduser() if isinstance(value, str) else value


# ---------------------------------------------------------------------------- expression


def parse_expression(text: str, names: set[str]) -> Coefficients:
    """`a + 0.5 * (b - c)` -> {a: 1.0, b: 0.5, c: -0.5}: names, numbers, + - * /, unary
    minus and parentheses; a model may be scaled by a number, never multiplied by a model."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"expression {text!r} is not valid: {e.msg}") from e
    value = _reduce(tree.body, names, text)
    if not isinstance(value, dict):
        raise ConfigError(f"expression {text!r} is a number; it must name at least one model")
    value = {k: v for k, v in value.items() if v != 0.0}
    if not value:
        raise ConfigError(f"expression {text!r}: every model's weight cancels out to 0")
    return value


def _reduce(node: ast.AST, names: set[str], text: str) -> float | Coefficients:
    """A number, or a linear combination of models (name -> coefficient)."""
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ConfigError(
                f"expression {text!r} names {node.id!r}, which is not in [models] ({sorted(names)})"
            )
        return {node.id: 1.0}
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _reduce(node.operand, names, text)
        return _scale(value, -1.0 if isinstance(node.op, ast.USub) else 1.0)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        left, right = _reduce(node.left, names, text), _reduce(node.right, names, text)
        return _binary(node.op, left, right, text)
    raise ConfigError(
        f"expression {text!r}: {ast.unparse(node)!r} is not allowed (only model "
        "names, numbers, + - * /, and parentheses)"
    )


def _binary(
    op: ast.operator, left: float | Coefficients, right: float | Coefficients, text: str
) -> float | Coefficients:
    both_numbers = not isinstance(left, dict) and not isinstance(right, dict)
    if isinstance(op, ast.Add | ast.Sub):
        sign = 1.0 if isinstance(op, ast.Add) else -1.0
        if both_numbers:
            return left + sign * right
        if isinstance(left, dict) and isinstance(right, dict):
            return {k: left.get(k, 0.0) + sign * right.get(k, 0.0) for k in left | right}
        raise ConfigError(f"expression {text!r} adds a number to a model; scale models instead")
    if isinstance(op, ast.Mult):
        if isinstance(left, dict) and isinstance(right, dict):
            raise ConfigError(f"expression {text!r} multiplies two models; scale by numbers")
        return _scale(right, left) if not isinstance(left, dict) else _scale(left, right)
    if isinstance(right, dict) or right == 0.0:
        raise ConfigError(f"expression {text!r} divides by a model or by zero")
    return _scale(left, 1.0 / right)


def _scale(value: float | Coefficients, factor: float) -> float | Coefficients:
    if isinstance(value, dict):
        return {k: v * factor for k, v in value.items()}
    return value * factor


def blend(coefficients: Coefficients, base: str, weight: float) -> Coefficients:
    """`base + weight * (expression - base)` as coefficients (MBW for one block)."""
    out = {k: weight * v for k, v in coefficients.items()}
    out[base] = out.get(base, 0.0) + (1.0 - weight)
    return {k: v for k, v in out.items() if v != 0.0}
