"""Merges of tiny SDXL checkpoints: the tool's output equals the same arithmetic done
directly on the state dicts; MBW weights hit their blocks; embeddings restore; a LoKr
merges as lycoris merges it; fp8 stays within fp8 precision; bad inputs name the tensor."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kohaku.errors import ConfigError, InputError
from kohaku.merge import LokrMerge, MbwWeights, MergeRecipe, merge
from kohaku.merge.__main__ import main
from kohaku.merge.run import EMBEDDINGS

State = dict[str, torch.Tensor]


def load(path: Path) -> State:
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def run(tmp_path: Path, models: dict[str, Path], expression: str, **kw) -> State:
    out = tmp_path / "merged.safetensors"
    merge(MergeRecipe(models=models, expression=expression, output=out, **{"dtype": "fp32", **kw}))
    return load_file(str(out))


def assert_close(got: State, want: State, atol: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        torch.testing.assert_close(got[k], v, atol=atol, rtol=1e-5, msg=k)


# ---------------------------------------------------------------------------- arithmetic


def test_gamma_rev1_recipe_equals_state_dict_arithmetic(tmp_path: Path, tiny_files):
    got = run(tmp_path, tiny_files, "m0 + 0.8 * (m1 - m2) + 0.5 * (m3 - m0)")
    s = {n: load(p) for n, p in tiny_files.items()}
    want = {
        k: s["m0"][k] + 0.8 * (s["m1"][k] - s["m2"][k]) + 0.5 * (s["m3"][k] - s["m0"][k])
        for k in s["m0"]
    }
    assert_close(got, want)
    assert not torch.equal(got[next(iter(got))], s["m0"][next(iter(got))])


def test_weighted_average_of_half_and_bf16_inputs_is_computed_in_float32(
    tmp_path: Path, tiny_files
):
    a, b = load(tiny_files["m0"]), load(tiny_files["m1"])
    save_file({k: v.half() for k, v in a.items()}, str(tmp_path / "a16.safetensors"))
    save_file({k: v.bfloat16() for k, v in b.items()}, str(tmp_path / "b16.safetensors"))
    models = {"a": tmp_path / "a16.safetensors", "b": tmp_path / "b16.safetensors"}
    got = run(tmp_path, models, "(a + 3 * b) / 4")
    want = {k: (a[k].half().float() + 3 * b[k].bfloat16().float()) / 4 for k in a}
    assert_close(got, want)


def test_half_inputs_are_added_in_float32_chunk_by_chunk(
    tmp_path: Path, tiny_files, monkeypatch: pytest.MonkeyPatch
):
    from kohaku.merge import run as run_module

    monkeypatch.setattr(run_module, "CHUNK", 997)  # several chunks per big tensor, ragged last ones
    test_weighted_average_of_half_and_bf16_inputs_is_computed_in_float32(tmp_path, tiny_files)


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_half_outputs_are_the_float32_result_cast(
    tmp_path: Path, tiny_files, dtype: str, torch_dtype: torch.dtype
):
    got = run(tmp_path, tiny_files, "0.5 * m0 + 0.5 * m1", dtype=dtype)
    a, b = load(tiny_files["m0"]), load(tiny_files["m1"])
    assert_close(got, {k: (0.5 * a[k] + 0.5 * b[k]).to(torch_dtype) for k in a}, atol=0)


def test_diffusers_folder_reads_as_its_single_file(tmp_path: Path, tiny_files, tiny_sdxl_dir: Path):
    """The folder (seed 0) maps onto the SGM names of m0 (seed 0): same tensors, exactly."""
    got = run(tmp_path, {"folder": tiny_sdxl_dir, "m1": tiny_files["m1"]}, "2 * folder - m1")
    a, b = load(tiny_files["m0"]), load(tiny_files["m1"])
    assert_close(got, {k: 2 * a[k] - b[k] for k in a})


def test_diffusers_weight_variants_are_found(tmp_path: Path, tiny_files, tiny_sdxl_dir):
    """A lone `*.fp16.safetensors` is read; two candidates and no plain file are an error."""
    folder = tmp_path / "variant"
    shutil.copytree(tiny_sdxl_dir, folder)
    unet = folder / "unet"
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "x.fp16.safetensors")
    got = run(tmp_path, {"v": folder}, "v")
    assert_close(got, load(tiny_files["m0"]), atol=0)
    shutil.copy(unet / "x.fp16.safetensors", unet / "y.safetensors")
    with pytest.raises(InputError, match=r"unet has 2 safetensors files .*expected diffusion_py"):
        run(tmp_path, {"v": folder}, "v")


def test_sharded_diffusers_weights_are_read_through_their_index(
    tmp_path: Path, tiny_files, tiny_sdxl_dir: Path
):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_sdxl_dir, folder)
    unet = folder / "unet"
    state = load_file(str(unet / "diffusion_pytorch_model.safetensors"))
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    keys = sorted(state)
    shards = {"s-1.safetensors": keys[::2], "s-2.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: state[k] for k in names}, str(unet / shard))
    weight_map = {k: shard for shard, names in shards.items() for k in names}
    index = unet / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    assert_close(run(tmp_path, {"s": folder}, "s"), load(tiny_files["m0"]), atol=0)


# ---------------------------------------------------------------------------- MBW


def expected_block(key: str) -> tuple[str, int]:
    """The test's own reading of an SGM key's UNet block."""
    parts = key.split(".")
    if key.startswith("model.diffusion_model.input_blocks."):
        return "input", int(parts[3])
    if key.startswith("model.diffusion_model.output_blocks."):
        return "output", int(parts[3])
    if key.startswith("model.diffusion_model.middle_block."):
        return "middle", 0
    return "other", 0


def test_mbw_weights_hit_their_blocks(tmp_path: Path, tiny_files):
    """Tiny UNet: 4 input blocks, a middle block, 4 output blocks; each gets its weight,
    everything else (time embedding, out, VAE, text encoders) gets `other`."""
    mbw = MbwWeights(
        base="m0", input=[0.0, 0.1, 0.2, 0.3], middle=0.5, output=[0.6, 0.7, 0.8, 0.9], other=1.0
    )
    got = run(tmp_path, tiny_files, "m1", mbw=mbw)
    a, b = load(tiny_files["m0"]), load(tiny_files["m1"])
    weights = {"input": mbw.input, "output": mbw.output, "middle": [0.5], "other": [1.0]}
    seen = set()
    for k in a:
        kind, n = expected_block(k)
        w = weights[kind][n]
        seen.add((kind, n))
        torch.testing.assert_close(got[k], a[k] + w * (b[k] - a[k]), atol=1e-6, rtol=0, msg=k)
    assert len(seen) == 4 + 4 + 1 + 1  # every block was checked
    assert torch.equal(
        got["model.diffusion_model.input_blocks.0.0.weight"],
        a["model.diffusion_model.input_blocks.0.0.weight"],
    )


def test_mbw_scales_the_expressions_delta_from_the_base(tmp_path: Path, tiny_files):
    mbw = MbwWeights(base="m0", input=[0.5] * 4, middle=0.5, output=[0.5] * 4, other=0.0)
    got = run(tmp_path, tiny_files, "m0 + (m1 - m2)", mbw=mbw)
    s = {n: load(p) for n, p in tiny_files.items()}
    for k in s["m0"]:
        w = 0.0 if expected_block(k)[0] == "other" else 0.5
        want = s["m0"][k] + w * (s["m1"][k] - s["m2"][k])
        torch.testing.assert_close(got[k], want, atol=1e-6, rtol=0, msg=k)


@pytest.mark.parametrize("field", ["input", "output"])
def test_mbw_weight_count_must_match_the_unet(tmp_path: Path, tiny_files, field: str):
    lists = {"input": [1.0] * 4, "output": [1.0] * 4} | {field: [1.0] * 9}
    mbw = MbwWeights(base="m0", middle=1.0, **lists)
    with pytest.raises(ConfigError, match=f"mbw.{field} has 9 weights, but model m0 has 4 UNet"):
        run(tmp_path, tiny_files, "m1", mbw=mbw)


# ---------------------------------------------------------------------------- embeddings


def test_restore_embeddings_copies_the_reference_tables(tmp_path: Path, tiny_files):
    got = run(tmp_path, tiny_files, "0.5 * m0 + 0.5 * m1", restore_embeddings_from="m2")
    a, b, ref = (load(tiny_files[n]) for n in ("m0", "m1", "m2"))
    for k in a:
        want = ref[k] if k in EMBEDDINGS else 0.5 * a[k] + 0.5 * b[k]
        torch.testing.assert_close(got[k], want, atol=1e-6, rtol=0, msg=k)
    assert all(k in a for k in EMBEDDINGS)


# ---------------------------------------------------------------------------- LoKr


@pytest.fixture(scope="module")
def lokr_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A delta-preset LoKr on the tiny UNet and both text encoders, w2 made non-zero."""
    from kohaku.sdxl import lokr
    from kohaku.sdxl.tiny import tiny_sdxl_components

    parts = tiny_sdxl_components(0)
    models = {c: getattr(parts, c) for c in ("unet", "text_encoder", "text_encoder_2")}
    adapters = lokr.attach(lokr.load_preset("delta"), models, seed=0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for net in adapters.networks.values():
            for name, p in net.named_parameters():
                if name.endswith("lokr_w2"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    path = tmp_path_factory.mktemp("lokr") / "lokr.safetensors"
    return lokr.save(adapters, path, dtype=torch.float32)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_lokr_merges_as_lycoris_merges_it(
    tmp_path: Path, tiny_files, tiny_sdxl_dir: Path, lokr_file: Path, weight: float
):
    from kohaku.sdxl.model import MODELS, sgm_state
    from tests.merge import reference

    parts = reference.lycoris_merged(tiny_sdxl_dir, lokr_file)
    with torch.no_grad():
        lycoris_merged = sgm_state({name: getattr(parts, name) for name in MODELS})
    base = load(tiny_files["m0"])
    want = {k: base[k] + weight * (lycoris_merged[k].float() - base[k]) for k in base}
    got = run(
        tmp_path, {"base": tiny_files["m0"]}, "base", lokr=LokrMerge(file=lokr_file, weight=weight)
    )
    assert_close(got, want, atol=1e-5)
    changed = [k for k in base if not torch.equal(got[k], base[k])]
    assert any("in_proj_weight" in k for k in changed)  # TE2's fused q/k/v rows
    assert any(k.startswith("conditioner.embedders.0.") for k in changed)
    assert sum(k.startswith("model.diffusion_model.") for k in changed) > 20


def test_lokr_with_unknown_modules_or_low_rank_factors_is_refused(tmp_path: Path, tiny_files):
    bad = {
        "lora_unet_nowhere.lokr_w1": torch.ones(2, 2),
        "lora_unet_nowhere.lokr_w2": torch.ones(2, 2),
    }
    save_file(bad, str(tmp_path / "unknown.safetensors"))
    with pytest.raises(InputError, match="1 modules have no tensor in the merged model"):
        run(
            tmp_path,
            {"m0": tiny_files["m0"]},
            "m0",
            lokr=LokrMerge(file=tmp_path / "unknown.safetensors"),
        )
    low = {
        f"lora_unet_out_2.{leaf}": torch.ones(2, 2)
        for leaf in ("lokr_w1", "lokr_w2_a", "lokr_w2_b")
    }
    save_file(low, str(tmp_path / "low.safetensors"))
    with pytest.raises(InputError, match="module lora_unet_out_2 has .*only full-matrix LoKr"):
        run(
            tmp_path,
            {"m0": tiny_files["m0"]},
            "m0",
            lokr=LokrMerge(file=tmp_path / "low.safetensors"),
        )
    assert not (tmp_path / "merged.safetensors").exists()


def test_lokr_that_does_not_rebuild_the_weight_is_refused_before_writing(
    tmp_path: Path, tiny_files
):
    small = {f"lora_unet_out_2.{leaf}": torch.ones(2, 2) for leaf in ("lokr_w1", "lokr_w2")}
    save_file(small, str(tmp_path / "small.safetensors"))
    with pytest.raises(
        InputError,
        match=r"module lora_unet_out_2 rebuilds \(4, 4\), but tensor "
        r"model.diffusion_model.out.2.weight is \(4, 32, 3, 3\)",
    ):
        run(
            tmp_path,
            {"m0": tiny_files["m0"]},
            "m0",
            lokr=LokrMerge(file=tmp_path / "small.safetensors"),
        )
    assert not (tmp_path / "merged.safetensors").exists()


# ---------------------------------------------------------------------------- fp8


def test_fp8_round_trip_stays_within_fp8_precision(tmp_path: Path, tiny_files):
    """e4m3fn keeps 3 mantissa bits: relative error <= 2^-4 for normal values, and at most
    half the smallest subnormal step (2^-10) near zero."""
    got = run(tmp_path, tiny_files, "0.7 * m0 + 0.3 * m1", dtype="fp8")
    a, b = load(tiny_files["m0"]), load(tiny_files["m1"])
    for k in a:
        want = 0.7 * a[k] + 0.3 * b[k]
        assert got[k].dtype == torch.float8_e4m3fn, k
        back = got[k].float()
        bound = torch.maximum(want.abs() * 2**-4, torch.full_like(want, 2**-10))
        assert ((back - want).abs() <= bound).all(), k


def test_fp8_clamps_to_its_largest_finite_value(tmp_path: Path, tiny_files):
    got = run(tmp_path, tiny_files, "5000 * m0", dtype="fp8")
    values = torch.cat([v.float().reshape(-1) for v in got.values()])
    assert torch.isfinite(values).all()
    assert values.max() == 448.0 and values.min() == -448.0


# ---------------------------------------------------------------------------- errors


def edited(tmp_path: Path, source: Path, name: str, edit) -> Path:  # noqa: ANN001
    state = load_file(str(source))
    edit(state)
    path = tmp_path / f"{name}.safetensors"
    save_file(state, str(path))
    return path


KEY = "model.diffusion_model.out.2.weight"


def test_a_tensor_missing_in_one_model_is_named(tmp_path: Path, tiny_files):
    short = edited(tmp_path, tiny_files["m1"], "short", lambda s: s.pop(KEY))
    with pytest.raises(
        InputError,
        match=rf"tensor {re.escape(KEY)} is in model a .* but not in "
        r"model b \(.*short.safetensors\)",
    ):
        run(tmp_path, {"a": tiny_files["m0"], "b": short}, "0.5 * a + 0.5 * b")
    with pytest.raises(
        InputError,
        match=rf"tensor {re.escape(KEY)} is in model b .* but not in "
        r"model a",
    ):
        run(tmp_path, {"a": short, "b": tiny_files["m0"]}, "0.5 * a + 0.5 * b")


def test_a_shape_mismatch_is_named(tmp_path: Path, tiny_files):
    def grow(s: State) -> None:
        s[KEY] = torch.zeros(s[KEY].shape[0] + 1, *s[KEY].shape[1:])

    wide = edited(tmp_path, tiny_files["m1"], "wide", grow)
    with pytest.raises(
        InputError,
        match=rf"tensor {re.escape(KEY)} has different shapes: "
        r"a \(4, 32, 3, 3\), b \(5, 32, 3, 3\)",
    ):
        run(tmp_path, {"a": tiny_files["m0"], "b": wide}, "a - b")


def test_a_dtype_mismatch_is_named(tmp_path: Path, tiny_files):
    ints = edited(
        tmp_path, tiny_files["m1"], "ints", lambda s: s.__setitem__(KEY, s[KEY].to(torch.int32))
    )
    with pytest.raises(
        InputError,
        match=rf"tensor {re.escape(KEY)} is torch.float32 in model a, "
        "torch.int32 in model b",
    ):
        run(tmp_path, {"a": tiny_files["m0"], "b": ints}, "a - b")
    with pytest.raises(
        InputError,
        match=rf"tensor {re.escape(KEY)} is torch.int32 in model b, "
        "torch.float32 in model a",
    ):
        run(tmp_path, {"a": tiny_files["m0"], "b": ints}, "b - a")


def test_trailing_unit_dims_are_the_same_shape(tmp_path: Path, tiny_files):
    """VAE attention is stored as [C, C] by some tools and [C, C, 1, 1] by others."""
    key = "first_stage_model.encoder.mid.attn_1.q.weight"
    flat = edited(
        tmp_path, tiny_files["m1"], "flat", lambda s: s.__setitem__(key, s[key][:, :, 0, 0].clone())
    )
    got = run(tmp_path, {"a": tiny_files["m0"], "b": flat}, "a - b")
    a, b = load(tiny_files["m0"]), load(tiny_files["m1"])
    assert got[key].shape == a[key].shape
    torch.testing.assert_close(got[key], a[key] - b[key])


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.safetensors", "model b: .*missing.safetensors does not exist"),
        ("model.ckpt", "model b: .*model.ckpt is a pickle checkpoint"),
        ("notes.txt", "neither a .safetensors file nor a folder"),
    ],
)
def test_bad_model_paths_are_input_errors(tmp_path: Path, tiny_files, name: str, message: str):
    if name != "missing.safetensors":
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputError, match=message):
        run(tmp_path, {"a": tiny_files["m0"], "b": tmp_path / name}, "a - b")


def test_a_folder_that_is_not_diffusers_sdxl_is_an_input_error(tmp_path: Path, tiny_files):
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="model b: .*unet/config.json is missing"):
        run(tmp_path, {"a": tiny_files["m0"], "b": tmp_path / "folder"}, "a - b")


# ---------------------------------------------------------------------------- output


def test_output_records_its_recipe_and_unused_models_are_not_opened(tmp_path: Path, tiny_files):
    models = {"m0": tiny_files["m0"], "m1": tiny_files["m1"], "ghost": tmp_path / "absent"}
    run(tmp_path, models, "0.5 * m0 + 0.5 * m1", dtype="bf16")
    with safe_open(str(tmp_path / "merged.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["kohaku_merge"])["expression"] == "0.5 * m0 + 0.5 * m1"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"


def test_output_modelspec_names_sdxl_its_title_and_the_prediction_type(
    tmp_path: Path, tiny_sdxl_dir: Path
):
    """A diffusers anchor has no ModelSpec: SDXL's required keys are filled in; a
    v-prediction scheduler makes a `v` file with ComfyUI's `v_pred` marker, rescaled betas
    (zero terminal SNR) add the `ztsnr` marker."""
    settings = {
        "vpred": {"prediction_type": "v_prediction"},
        "ztsnr": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
    }
    for name, over in settings.items():
        shutil.copytree(tiny_sdxl_dir, tmp_path / name)
        config = tmp_path / name / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), **over}))
    for folder, prediction, zero in (
        (tiny_sdxl_dir, "epsilon", False),
        (tmp_path / "vpred", "v", False),
        (tmp_path / "ztsnr", "v", True),
    ):
        got = run(tmp_path, {"d": folder}, "d", dtype="fp16")
        with safe_open(str(tmp_path / "merged.safetensors"), "pt") as f:
            meta = f.metadata()
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
        assert meta["modelspec.sai_model_spec"] == "1.0.0" and meta["modelspec.title"] == "merged"
        assert meta["modelspec.prediction_type"] == prediction
        assert ("v_pred" in got) == (prediction == "v") and ("ztsnr" in got) == zero
        assert "ss_zero_terminal_snr" not in meta  # the folder's own reading stays inside
        assert all(bool(torch.isfinite(v.float()).all()) for v in got.values())


def test_cli_runs_a_recipe_file(tmp_path: Path, tiny_files, capsys: pytest.CaptureFixture):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'expression = "a"\noutput = "o.safetensors"\n[models]\na = "{tiny_files["m0"]}"\n'
    )
    assert main([str(recipe)]) == 0
    assert "o.safetensors" in capsys.readouterr().out
    assert (tmp_path / "o.safetensors").exists()
    recipe.write_text('expression = "zz"\noutput = "o.safetensors"\n[models]\na = "x"\n')
    assert main([str(recipe)]) == 2
    assert "'zz'" in capsys.readouterr().err


def test_importing_merge_loads_neither_prefect_nor_diffusers():
    heavy = "('prefect', 'diffusers', 'transformers')"
    code = (
        "import sys, kohaku.merge, kohaku.merge.run\n"
        f"print(sorted(m for m in {heavy} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
