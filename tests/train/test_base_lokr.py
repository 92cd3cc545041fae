"""A base with an earlier LoKr merged in as it loads (`train.model.lokr`, epsilon rev2 resumed
from rev1) on the tiny model: training on base + LoKr A gives the losses and the LoKr that
training on a base file into which A was exported gives; the new LoKr records A (sha256,
weight), and export and evaluate of it equal the explicit merges (A first, then it) and
refuse a base without A; a LoKr that does not fit the base (another architecture, other
shapes, a LoRA, another LoKr beneath it, another schedule) is one error before any weight
is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kohaku.cli import main
from kohaku.errors import ConfigError, InputError
from kohaku.evaluate.generate import Checkpoint, Job, Sampler, check_base_lokr
from kohaku.sdxl import lokr
from kohaku.sdxl.lokr_deltas import META_BASE_LOKR
from kohaku.sdxl.model import MODELS, check_model, check_model_path, load_sdxl, save_single_file
from kohaku.sdxl.tiny import tiny_sdxl_components
from kohaku.stage import sha256_file
from kohaku.train.config import ModelConfig, TrainConfig
from kohaku.train.export import export_merged
from kohaku.train.loop import Dist, Trainer
from kohaku.train.run import check_inputs
from tests.evaluate.conftest import tiny_config
from tests.train.rundir import write_training_run

CPU = torch.device("cpu")


def random_lokr(path: Path, seed: int, prediction: str = "epsilon", extra=None) -> Path:
    """A delta-preset LoKr of the tiny model with non-zero factors (a trained one's shape)."""
    parts = tiny_sdxl_components(0)
    models = {c: getattr(parts, c) for c in ("unet", "text_encoder", "text_encoder_2")}
    adapters = lokr.attach(lokr.load_preset("delta"), models, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in adapters.networks.values():
            for name, p in net.named_parameters():
                if name.endswith("lokr_w2"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return lokr.save(adapters, path, torch.float32, prediction=prediction, extra=extra)


def rewrite(path: Path, out: Path, tensors=None, metadata=None) -> Path:
    """`path` with its tensors or metadata changed by the given functions."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    save_file(tensors(state) if tensors else state, str(out),
              metadata=metadata(meta) if metadata else meta)  # fmt: skip
    return out


def train_config(model: dict, steps: int = 3) -> TrainConfig:
    return TrainConfig.model_validate({
        "model": model, "batch_size": 2, "max_steps": steps, "layout": "epsilon",
        "optim": {"kind": "adamw", "lr_unet": 1e-3, "lr_text": 1e-3, "warmup_steps": 0},
        "checkpoint_every": 100, "log_every": 1,
    })  # fmt: skip


@pytest.fixture(scope="module")
def lokr_a(tmp_path_factory) -> Path:
    return random_lokr(tmp_path_factory.mktemp("lokr-a") / "a.safetensors", seed=3)


@pytest.fixture(scope="module")
def trained(tiny_sdxl_dir, lokr_a, tmp_path_factory) -> dict[str, Path]:
    """Three steps on base + A (merged as it loads) and on the exported merge of base and
    A (a float32 diffusers folder), from the same data and seed: their run dirs."""
    root = tmp_path_factory.mktemp("stacked")
    merged = export_merged(check_model_path(tiny_sdxl_dir), lokr_a, root / "base-a", "diffusers",
                           "fp32")  # fmt: skip
    out = {"merged_base": merged}
    for name, model in (("stacked", {"path": str(tiny_sdxl_dir), "lokr": str(lokr_a)}),
                        ("merged", {"path": str(merged)})):  # fmt: skip
        run = write_training_run(root / name, n=4, buckets=((64, 64),))
        Trainer(train_config(model), run, Dist(0, 1, CPU)).train()
        out[name] = run
    return out


def losses(run: Path) -> list[float]:
    lines = (run / "train" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines]


def test_training_on_base_plus_lokr_equals_training_on_the_exported_merge(trained, lokr_a):
    stacked, merged = trained["stacked"], trained["merged"]
    assert len(losses(stacked)) == 3
    assert losses(stacked) == pytest.approx(losses(merged), rel=1e-6, abs=1e-7)
    ours = load_file(str(stacked / "train" / "lokr.safetensors"))
    theirs = load_file(str(merged / "train" / "lokr.safetensors"))
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[key], rtol=1e-3, atol=1e-5)
    with safe_open(str(stacked / "train" / "lokr.safetensors"), "pt") as f:
        record = json.loads(f.metadata()[META_BASE_LOKR])
    assert record == {"file": "a.safetensors", "sha256": sha256_file(lokr_a), "weight": 1.0}
    with safe_open(str(merged / "train" / "lokr.safetensors"), "pt") as f:
        assert META_BASE_LOKR not in f.metadata()


def test_a_single_file_base_streams_with_the_lokr_as_its_exported_merge_holds(
    tiny_sdxl_dir, lokr_a, tmp_path
):
    """The single-file path (SGM names, TE2's fused q/k/v rows) at a weight of 0.5, against
    a merge recipe's result."""
    single = save_single_file(load_sdxl(check_model_path(tiny_sdxl_dir)),
                              tmp_path / "base.safetensors", torch.float32)  # fmt: skip
    source = check_model(ModelConfig(path=single, lokr=lokr_a, lokr_weight=0.5))
    assert source.lokr is not None and source.lokr.weight == 0.5
    ours = load_sdxl(source)
    recipe = tmp_path / "half.toml"
    recipe.write_text(f'models = {{ base = "{single}" }}\nexpression = "base"\n'
                      f'output = "{tmp_path / "half.safetensors"}"\ndtype = "fp32"\n'
                      f'[lokr]\nfile = "{lokr_a}"\nweight = 0.5\n')  # fmt: skip
    main(["merge", str(recipe)])
    theirs = load_sdxl(check_model_path(tmp_path / "half.safetensors", config_dir=tiny_sdxl_dir))
    for name in MODELS:
        want = getattr(theirs, name).state_dict()
        for key, value in getattr(ours, name).state_dict().items():
            assert torch.equal(value, want[key]), (name, key)
    assert ours.base_lokr == source.lokr


def test_export_of_the_stacked_lokr_equals_the_explicit_merges(trained, tiny_sdxl_dir, lokr_a,
                                                                tmp_path):  # fmt: skip
    """export (A, then the new LoKr) == the new LoKr merged into the exported base + A; a
    base without A, or with A at another weight, is refused."""
    new = trained["stacked"] / "train" / "lokr.safetensors"
    stacked = check_model(ModelConfig(path=tiny_sdxl_dir, lokr=lokr_a))
    ours = export_merged(stacked, new, tmp_path / "ours.safetensors", "single_file", "fp32")
    plain = rewrite(
        new,
        tmp_path / "plain.safetensors",
        metadata=lambda m: {k: v for k, v in m.items() if k != META_BASE_LOKR},
    )
    base_a = export_merged(check_model_path(tiny_sdxl_dir), lokr_a, tmp_path / "ba.safetensors",
                           "single_file", "fp32")  # fmt: skip
    theirs = export_merged(check_model_path(base_a, config_dir=tiny_sdxl_dir), plain,
                           tmp_path / "theirs.safetensors", "single_file", "fp32")  # fmt: skip
    a, b = load_file(str(ours)), load_file(str(theirs))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    folder = export_merged(stacked, new, tmp_path / "ours-folder", "diffusers", "fp32")
    unet = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    want = load_sdxl(check_model_path(theirs, config_dir=tiny_sdxl_dir)).unet.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in unet.items())

    with pytest.raises(InputError, match=r"trained on top of LoKr a\.safetensors .*--base-lokr"):
        export_merged(check_model_path(tiny_sdxl_dir), new, tmp_path / "x.safetensors",
                      "single_file")  # fmt: skip
    half = check_model(ModelConfig(path=tiny_sdxl_dir, lokr=lokr_a, lokr_weight=0.5))
    with pytest.raises(InputError, match=r"but the LoKr before it is .*weight 0\.5"):
        export_merged(half, new, tmp_path / "y.safetensors", "single_file")
    main(["export", "--base", str(tiny_sdxl_dir), "--base-lokr", str(lokr_a), "--lokr",
          str(new), "--out", str(tmp_path / "cli.safetensors"), "--storage", "fp32"])  # fmt: skip
    c = load_file(str(tmp_path / "cli.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_evaluate_samples_base_plus_lokr_then_the_new_lokr(trained, tiny_sdxl_dir, lokr_a):
    """The stacked run's pictures from base + A + its LoKr equal those from the exported
    base + A with it; a base without A is refused."""
    run = trained["stacked"]
    final = Checkpoint("final", 3, run / "train" / "lokr.safetensors", "kohya")
    cfg = tiny_config(steps=1, seeds=[0])
    jobs = [Job("p0", "1girl, hatsune miku", 0)]
    pictures = []
    stacked = check_model(ModelConfig(path=tiny_sdxl_dir, lokr=lokr_a))
    for source in (
        stacked,
        check_model_path(trained["merged_base"]),
        check_model_path(tiny_sdxl_dir),
    ):
        sampler = Sampler(source, cfg, run, [final])
        sampler.use(final)
        pictures.append([np.asarray(p) for p in sampler.sample(jobs)])
    assert all(np.array_equal(a, b) for a, b in zip(pictures[0], pictures[1], strict=True))
    assert not np.array_equal(pictures[0][0], pictures[2][0])  # A makes a difference
    check_base_lokr(stacked, run, [final])
    with pytest.raises(InputError, match=r"trained on top of LoKr a\.safetensors.*base_model"):
        check_base_lokr(check_model_path(tiny_sdxl_dir), run, [final])


def test_unfit_base_lokrs_are_one_error_each_before_any_weight(tiny_sdxl_dir, lokr_a, tmp_path):
    run = write_training_run(tmp_path / "run", n=2, buckets=((64, 64),))

    def check(lokr_file: Path, **loss) -> None:
        model = {"path": str(tiny_sdxl_dir), "lokr": str(lokr_file)}
        cfg = train_config(model).model_copy(update={"loss": train_config(model).loss
                                                     .model_copy(update=loss)})  # fmt: skip
        check_inputs(cfg, run)

    def renamed(state):  # SD 1.x's single text encoder: lora_te_, no lora_te1_ / lora_te2_
        return {k.replace("lora_te1_", "lora_te_"): v for k, v in state.items()
                if not k.startswith("lora_te2_")}  # fmt: skip

    def reshaped(state):
        key = next(k for k in sorted(state) if k.endswith("lokr_w1"))
        return state | {key: torch.zeros(state[key].shape[0] + 1, state[key].shape[1])}

    def lora(state):
        return {
            "lora_unet_conv_in.lora_up.weight": torch.zeros(4, 2),
            "lora_unet_conv_in.lora_down.weight": torch.zeros(2, 4),
        }

    record = {META_BASE_LOKR: json.dumps({"file": "z.safetensors", "sha256": "0" * 64,
                                          "weight": 1.0})}  # fmt: skip
    cases = [
        (tmp_path / "nowhere.safetensors", r"model\.lokr .*does not exist"),
        (rewrite(lokr_a, tmp_path / "sd1.safetensors", renamed),
         r"model\.lokr: LoKr .* modules have no tensor .*lora_te_text_model"),
        (rewrite(lokr_a, tmp_path / "shape.safetensors", reshaped),
         r"model\.lokr: LoKr .* rebuilds .* but tensor"),
        (rewrite(lokr_a, tmp_path / "lora.safetensors", lora), r"only full-matrix LoKr"),
        (rewrite(lokr_a, tmp_path / "chain.safetensors", metadata=lambda m: m | record),
         r"itself trained on top of LoKr z\.safetensors"),
    ]  # fmt: skip
    for path, message in cases:
        with pytest.raises(InputError, match=message):
            check(path)
    v_lokr = random_lokr(tmp_path / "v.safetensors", 3, prediction="v_prediction")
    with pytest.raises(
        ConfigError, match=r"with model\.lokr .*v\.safetensors merged in, .*v_prediction"
    ):
        check(v_lokr)  # base + a v-prediction LoKr is a v-prediction model
    check(v_lokr, prediction="v_prediction")
    for bad in ({"lokr": str(lokr_a), "lokr_weight": float("nan")}, {"lokr_weight": 0.5}):
        with pytest.raises(ValidationError, match="finite|lokr is empty"):
            ModelConfig.model_validate({"path": str(tiny_sdxl_dir), **bad})


def test_the_config_json_of_a_model_without_a_base_lokr_is_unchanged(tiny_sdxl_dir):
    """The new fields are left out while empty: earlier config hashes (resume and cache
    keys) hold."""
    plain = ModelConfig(path=tiny_sdxl_dir)
    assert "lokr" not in plain.model_dump_json()
    with_lokr = ModelConfig(path=tiny_sdxl_dir, lokr=Path("a.safetensors"), lokr_weight=0.5)
    assert ModelConfig.model_validate_json(with_lokr.model_dump_json()) == with_lokr
