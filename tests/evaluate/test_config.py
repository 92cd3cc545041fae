"""EvaluateConfig: defaults, described fields and cross-field checks."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest

from kohaku.evaluate.config import EvaluateConfig


def test_defaults_and_descriptions() -> None:
    cfg = EvaluateConfig()
    assert (cfg.width, cfg.height, cfg.checkpoints, cfg.lokr_weight) == (832, 1216, "final", 1.0)
    assert all(f.description for f in EvaluateConfig.model_fields.values())
    with pytest.raises(pydantic.ValidationError):
        cfg.steps = 3  # frozen


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 100}, "multiples of 8"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"seeds": []}, "at least 1"),
        ({"checkpoints": [2, 2]}, "distinct steps"),
        ({"checkpoints": [0]}, "distinct steps"),
        ({"checkpoints": "best"}, "checkpoints"),
        ({"characters": 0, "styles": 0, "quality_probes": False}, "prompt set is empty"),
        ({"cfg_scale": 0.5}, "greater than or equal to 1"),
        ({"clip": "x"}, "Extra inputs"),
    ],
)
def test_bad_configs(fields: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        EvaluateConfig(**fields)


def test_checkpoint_choices() -> None:
    assert EvaluateConfig(checkpoints="all").checkpoints == "all"
    assert EvaluateConfig(checkpoints=[500, 1000]).checkpoints == [500, 1000]
    assert EvaluateConfig(checkpoints=[], include_base=True).checkpoints == []


def test_config_prompts_and_report_load_neither_torch_nor_prefect() -> None:
    """A flow builds the form and the prompt set, and renders the report, without torch."""
    code = (
        "import sys\nimport kohaku.evaluate.config, kohaku.evaluate.prompts\n"
        "import kohaku.evaluate.report\n"
        "print(','.join(m for m in ('torch', 'diffusers', 'prefect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
