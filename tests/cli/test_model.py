"""The model commands in this process, without Prefect: `kohaku train` from a config with
only a [train] section (the trainer's lines streamed), `kohaku export` of its LoKr,
`kohaku evaluate` from an [evaluate] section alone, `kohaku merge` of a recipe; bad input
found inside a stage is one line and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from kohaku.cli import main
from kohaku.stage import read_manifest
from tests.cli.test_errors import fails
from tests.torch_fixtures import one_torch_thread, tiny_sdxl_dir  # noqa: F401
from tests.train.rundir import write_training_run


def train_toml(folder: Path, model: Path) -> Path:
    """A run config with nothing but the run dir and [train]."""
    path = folder / "train.toml"
    path.write_text(f"""run_dir = "run"
[train]
batch_size = 2
max_steps = 1
log_every = 1
layout = "epsilon"
[train.model]
path = "{model}"
[train.optim]
kind = "adamw"
warmup_steps = 0
""")
    return path


def test_train_then_export(tiny_sdxl_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_training_run(tmp_path / "run", n=2, buckets=((64, 64),))
    main(["train", "-c", str(train_toml(tmp_path, tiny_sdxl_dir))])
    out = capsys.readouterr().out
    assert "kohaku-train " in out and "train: done" in out  # the trainer's lines, then ours
    assert read_manifest(tmp_path / "run" / "train").counts["steps"] == 1

    lokr, merged = tmp_path / "run" / "train" / "lokr.safetensors", tmp_path / "merged.safetensors"
    main(["export", "--base", str(tiny_sdxl_dir), "--lokr", str(lokr), "--out", str(merged),
          "--storage", "bf16"])  # fmt: skip
    assert f"{merged} (single_file, bf16)" in capsys.readouterr().out
    with safe_open(str(merged), "pt") as f:
        unet = [k for k in f.keys() if k.startswith("model.diffusion_model.")]  # noqa: SIM118
        assert unet and str(f.get_tensor(unet[0]).dtype) == "torch.bfloat16"


def test_evaluate_command(tiny_sdxl_dir, tmp_path, capsys):  # noqa: F811
    from tests.evaluate.conftest import write_eval_run

    write_eval_run(tmp_path / "run", tiny_sdxl_dir)
    (tmp_path / "run.toml").write_text('run_dir = "run"\n[evaluate]\ncharacters = 2\nstyles = 1\n'
                                       'seeds = [0]\nsteps = 1\nwidth = 64\nheight = 64\n'
                                       'checkpoints = "final"\ndevice = "cpu"\n')  # fmt: skip
    main(["evaluate", "-c", str(tmp_path / "run.toml")])
    counts = read_manifest(tmp_path / "run" / "evaluate").counts
    n = counts["pictures_per_checkpoint"]
    assert (
        counts["checkpoints"] == 1
        and f"evaluate final: {n}/{n} pictures" in capsys.readouterr().out
    )
    # the libraries' chatter (LyCORIS hooking the LoKr) went to the run's log file
    assert "LyCORIS" in (tmp_path / "run" / "logs" / "evaluate.log").read_text()


def test_merge_command(tiny_sdxl_dir, tmp_path, capsys):  # noqa: F811
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'output = "out.safetensors"\ndtype = "fp16"\nexpression = "0.5 * m0"\n'
                      f'[models]\nm0 = "{tiny_sdxl_dir}"\n')  # fmt: skip
    main(["merge", str(recipe)])
    assert "out.safetensors" in capsys.readouterr().out and (tmp_path / "out.safetensors").is_file()
    recipe.write_text('output = "out.safetensors"\n[models]\nm0 = "nowhere"\n')
    assert "expression: Field required" in fails(["merge", str(recipe)], capsys)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_input_inside_the_stage_is_one_line(command, tiny_sdxl_dir, tmp_path, capsys):  # noqa: F811
    """Found by the stage's own checks (after the config), still one line and exit 2."""
    notamodel = tmp_path / "model.safetensors"
    notamodel.write_bytes(b"not safetensors")
    toml = train_toml(tmp_path, notamodel if command == "train" else tiny_sdxl_dir)
    write_training_run(tmp_path / "run", n=2, buckets=((64, 64),))
    (tmp_path / "run" / "tag" / "captions.parquet").unlink()
    err = fails([command, "-c", str(toml), "--set", "evaluate.seeds=[0]"], capsys)
    assert str(notamodel if command == "train" else tmp_path / "run" / "tag") in err
