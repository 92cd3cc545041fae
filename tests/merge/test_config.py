"""Merge recipes: the expression parser (ast, never eval), TOML loading, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohaku.errors import ConfigError
from kohaku.merge.config import MergeRecipe, blend, load_recipe, parse_expression

NAMES = {"a", "b", "c", "d", "beta7", "anxl3", "anxl2", "base7"}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a", {"a": 1.0}),
        (
            "beta7 + 0.8 * (anxl3 - anxl2) + 0.5 * (base7 - beta7)",
            {"beta7": 0.5, "anxl3": 0.8, "anxl2": -0.8, "base7": 0.5},
        ),
        (
            "beta7 + 1.0 * (anxl3 - anxl2) + 0.25 * (base7 - beta7)",
            {"beta7": 0.75, "anxl3": 1.0, "anxl2": -1.0, "base7": 0.25},
        ),
        ("(a + b) / 2", {"a": 0.5, "b": 0.5}),
        ("a * 0.3 + 0.7 * b", {"a": 0.3, "b": 0.7}),
        ("-a + 2 * b", {"a": -1.0, "b": 2.0}),
        ("2 * 3 * a - +b", {"a": 6.0, "b": -1.0}),
        ("a + b - b", {"a": 1.0}),  # a zero weight drops the model
        ("(1 - 0.25) * a + 0.25 * c", {"a": 0.75, "c": 0.25}),
    ],
)
def test_expression_reduces_to_one_weight_per_model(text: str, want: dict[str, float]):
    got = parse_expression(text, NAMES)
    assert got.keys() == want.keys()
    assert got == pytest.approx(want)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a * b", "multiplies two models"),
        ("a + 1", "adds a number"),
        ("2 + 3", "is a number"),
        ("a - a", "cancels out"),
        ("a / 0", "by zero"),
        ("a / b", "divides by a model"),
        ("e + a", "'e', which is not in [models]"),
        ("__import__('os').system('true')", "is not allowed"),
        ("a.real", "is not allowed"),
        ("a ** 2", "is not allowed"),
        ("[a, b]", "is not allowed"),
        ("a if b else c", "is not allowed"),
        ("'a'", "is not allowed"),
        ("True * a", "is not allowed"),
        ("a +", "is not valid"),
    ],
)
def test_bad_expressions_are_config_errors(text: str, message: str):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_expression(text, NAMES)


def test_blend_is_base_plus_weight_times_delta():
    expr = {"a": 0.5, "b": 0.5}
    assert blend(expr, "a", 0.0) == {"a": 1.0}
    assert blend(expr, "a", 1.0) == expr
    assert blend({"b": 1.0}, "a", 0.25) == pytest.approx({"a": 0.75, "b": 0.25})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_load_recipe_resolves_paths_from_the_recipe_folder(tmp_path: Path):
    recipe = load_recipe(
        write(
            tmp_path,
            """
output = "out/merged.safetensors"
dtype = "fp8"
expression = "a + 0.5 * (b - a)"
restore_embeddings_from = "b"

[models]
a = "models/a.safetensors"
b = "/abs/b"

[mbw]
base = "a"
input = [0, 0.5]
middle = 1
output = [1, 0.5]

[lokr]
file = "lokr.safetensors"
weight = 0.5
""",
        )
    )
    assert recipe.models == {"a": tmp_path / "models/a.safetensors", "b": Path("/abs/b")}
    assert recipe.output == tmp_path / "out/merged.safetensors"
    assert recipe.lokr is not None and recipe.lokr.file == tmp_path / "lokr.safetensors"
    assert recipe.mbw is not None and recipe.mbw.other == 1.0
    assert recipe.coefficients() == {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('expression = "a"\noutput = "o.safetensors"\nextra = 1\n[models]\na = "x"', "extra"),
        ('expression = "a"\noutput = "o.safetensors"\n[models]\na = 1', "models.a"),
        ('expression = "c"\noutput = "o.safetensors"\n[models]\na = "x"', "'c'"),
        (
            'expression = "a"\noutput = "o.safetensors"\nrestore_embeddings_from = "z"\n'
            '[models]\na = "x"',
            "restore_embeddings_from = 'z'",
        ),
        (
            'expression = "a"\noutput = "o.safetensors"\n[models]\na = "x"\n'
            '[mbw]\nbase = "q"\ninput = []\nmiddle = 1\noutput = []',
            "mbw.base = 'q'",
        ),
        ('expression = "a"\noutput = "o.safetensors"\ndtype = "fp4"\n[models]\na = "x"', "dtype"),
        ('expression = "a"\noutput = "o.safetensors"\n[models]\n"2x" = "x"', "identifiers"),
        ('expression = "a"\n[models]\na = "x"', "output"),
        ("expression = ", "cannot read"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path: Path, text: str, message: str):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_recipe(write(tmp_path, text))


def test_missing_recipe_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read merge recipe"):
        load_recipe(tmp_path / "nope.toml")


def test_recipe_is_frozen():
    recipe = MergeRecipe(models={"a": Path("x")}, expression="a", output=Path("o"))
    with pytest.raises(ValueError, match="frozen"):
        recipe.dtype = "fp32"  # type: ignore[misc]
