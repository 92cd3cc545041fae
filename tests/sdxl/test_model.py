"""kohaku.sdxl.model and kohaku.sdxl.tiny: checking, loading and saving SDXL, on CPU."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kohaku.errors import InputError
from kohaku.sdxl import model as m
from kohaku.sdxl.tiny import tiny_sdxl_components, write_tiny_sdxl


@torch.no_grad()
def outputs(parts: m.SDXLParts) -> dict[str, torch.Tensor]:
    """Each model on a fixed input: UNet noise prediction, the text states SDXL uses, a decode."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, parts.unet.config.cross_attention_dim, generator=g)
    pooled = torch.randn(2, parts.text_encoder_2.config.projection_dim, generator=g)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    cond = {"text_embeds": pooled, "time_ids": time_ids}
    ids = parts.tokenizer("1girl at the mat", padding="max_length", return_tensors="pt").input_ids
    te2 = parts.text_encoder_2(ids, output_hidden_states=True)
    return {
        "unet": parts.unet(
            latents, torch.tensor([10, 500]), context, added_cond_kwargs=cond
        ).sample,
        "te1": parts.text_encoder(ids, output_hidden_states=True).hidden_states[-2],
        "te2": te2.hidden_states[-2],
        "pooled": te2.text_embeds,
        "vae": parts.vae.decode(latents).sample,
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.fixture(scope="module")
def parts() -> m.SDXLParts:
    return tiny_sdxl_components(seed=0)


@pytest.fixture(scope="module")
def reference(parts: m.SDXLParts) -> dict[str, torch.Tensor]:
    return outputs(parts)


# ---------------------------------------------------------------- the tiny model


def test_tiny_build_and_write_is_fast_small_and_seeded(tmp_path: Path, parts: m.SDXLParts):
    start = time.perf_counter()
    out = write_tiny_sdxl(tmp_path / "tiny", seed=0)
    assert time.perf_counter() - start < 2.0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    assert {p.suffix for p in files} <= {".json", ".txt", ".safetensors"}
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (out / "tokenizer").iterdir()}
    again = tiny_sdxl_components(seed=0).unet.state_dict()
    other = tiny_sdxl_components(seed=1).unet.state_dict()
    state = parts.unet.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in state.items())
    assert not torch.equal(state["conv_in.weight"], other["conv_in.weight"])


def test_tiny_is_sdxl_shaped(parts: m.SDXLParts):
    unet, te1, te2 = parts.unet.config, parts.text_encoder.config, parts.text_encoder_2.config
    assert unet.addition_embed_type == "text_time"
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + (
        te2.projection_dim
    )
    assert parts.vae.config.scaling_factor == 0.13025
    assert 2 ** (len(parts.vae.config.block_out_channels) - 1) == 8
    assert parts.tokenizer.model_max_length == 77 and te1.vocab_size == len(parts.tokenizer)
    ids = parts.tokenizer("the girl").input_ids
    assert parts.tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "the</w>", "girl</w>", "<|endoftext|>"
    ]  # fmt: skip
    sched = parts.noise_scheduler.config
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end) == (
        "scaled_linear",
        0.00085,
        0.012,
    )
    assert (sched.num_train_timesteps, sched.prediction_type) == (1000, "epsilon")


def test_tiny_folder_reloads_identically_and_runs_as_a_pipeline(
    tiny_sdxl_dir: Path, parts: m.SDXLParts, reference: dict[str, torch.Tensor]
):
    loaded = m.load_sdxl(m.check_model_path(tiny_sdxl_dir))
    for name in m.MODELS:
        state, want = getattr(loaded, name).state_dict(), getattr(parts, name).state_dict()
        assert all(torch.equal(v, state[k]) for k, v in want.items()), name
    got = outputs(loaded)
    assert torch.equal(got["unet"], reference["unet"])  # float32 written and read back
    assert torch.equal(got["vae"], reference["vae"])
    for name in ("te1", "te2", "pooled"):  # transformers picks its attention kernel per load
        torch.testing.assert_close(got[name], reference[name], rtol=1e-5, atol=1e-5, msg=name)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir, local_files_only=True)
    image = pipe(
        "1girl", num_inference_steps=2, height=64, width=64, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images  # fmt: skip
    assert image.shape == (1, 64, 64, 3)


# ---------------------------------------------------------------- single file


def test_single_file_has_sgm_layout_and_reloads_exactly(
    tmp_path: Path, parts: m.SDXLParts, reference: dict[str, torch.Tensor], tiny_config_dir: Path
):
    path = m.save_single_file(parts, tmp_path / "model.safetensors", torch.float32)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # temp file renamed
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "conditioner"}
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys
    # the config folder holds other (seed 1) weights: equality proves they came from the file
    loaded = m.load_sdxl(m.check_model_path(path, config_dir=tiny_config_dir))
    for name in m.MODELS:
        state, want = getattr(loaded, name).state_dict(), getattr(parts, name).state_dict()
        assert all(torch.equal(v, state[k]) for k, v in want.items()), name
    got = outputs(loaded)
    for name, want in reference.items():  # same weights; kernels may differ per load
        torch.testing.assert_close(got[name], want, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("dtype", "size_ratio", "tolerance"),
    [
        (torch.float16, 0.5, 5e-3),
        (torch.bfloat16, 0.5, 3e-2),
        # 3 mantissa bits: ~10% relative error on this random model (an unrelated one: >100%)
        (torch.float8_e4m3fn, 0.25, 0.25),
    ],
)
def test_low_precision_files_are_smaller_and_reload_close(
    tmp_path: Path,
    parts: m.SDXLParts,
    reference: dict[str, torch.Tensor],
    tiny_config_dir: Path,
    dtype: torch.dtype,
    size_ratio: float,
    tolerance: float,
):
    full = m.save_single_file(parts, tmp_path / "fp32.safetensors", torch.float32)
    small = m.save_single_file(parts, tmp_path / "small.safetensors", dtype)
    assert small.stat().st_size / full.stat().st_size == pytest.approx(size_ratio, abs=0.02)
    assert {t.dtype for t in load_file(small).values()} == {dtype}
    loaded = m.load_sdxl(m.check_model_path(small, config_dir=tiny_config_dir))
    assert next(loaded.unet.parameters()).dtype == torch.float32  # upcast on load
    got = outputs(loaded)
    for name in ("unet", "te1", "te2", "pooled"):
        assert rel_err(got[name], reference[name]) < tolerance, name
    assert rel_err(got["vae"], reference["vae"]) < 2 * tolerance


def test_diffusers_folder_in_fp16_reloads_close(
    tmp_path: Path, parts: m.SDXLParts, reference: dict[str, torch.Tensor]
):
    out = m.save_diffusers(parts, tmp_path / "fp16", torch.float16)
    m.save_diffusers(parts, out, torch.float16)  # replacing an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16"]
    unet_file = out / "unet" / "diffusion_pytorch_model.safetensors"
    assert {t.dtype for t in load_file(unet_file).values()} == {torch.float16}
    loaded = m.load_sdxl(m.check_model_path(out))
    assert rel_err(outputs(loaded)["unet"], reference["unet"]) < 5e-3


def test_other_dtypes_are_refused_and_nothing_is_left_behind(tmp_path: Path, parts: m.SDXLParts):
    with pytest.raises(ValueError, match="cannot save in torch.float64"):
        m.save_single_file(parts, tmp_path / "model.safetensors", torch.float64)
    with pytest.raises(ValueError, match="cannot save in torch.float64"):
        m.save_diffusers(parts, tmp_path / "folder", torch.float64)
    assert list(tmp_path.iterdir()) == []


def test_a_file_missing_a_tensor_is_refused_not_filled_from_the_config(
    tmp_path: Path, parts: m.SDXLParts, tiny_config_dir: Path
):
    state = load_file(m.save_single_file(parts, tmp_path / "full.safetensors", torch.float32))
    del state["model.diffusion_model.out.2.weight"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(InputError, match=r"lacks 1 SDXL tensors.*out\.2\.weight"):
        m.check_model_path(tmp_path / "cut.safetensors", config_dir=tiny_config_dir)


def test_a_config_dir_of_other_shapes_is_refused(
    tmp_path: Path, parts: m.SDXLParts, tiny_sdxl_dir: Path
):
    path = m.save_single_file(parts, tmp_path / "model.safetensors", torch.float16)
    configs = copy_configs(tiny_sdxl_dir, tmp_path / "configs")
    te2 = json.loads((configs / "text_encoder_2" / "config.json").read_text())
    (configs / "text_encoder_2" / "config.json").write_text(
        json.dumps({**te2, "intermediate_size": 2 * te2["intermediate_size"]})
    )
    with pytest.raises(InputError, match=r"does not describe .*resblocks\.0\.mlp\.c_fc"):
        m.check_model_path(path, config_dir=configs)


# ---------------------------------------------------------------- embeddings


def test_restore_embeddings_copies_both_tables_of_both_encoders_exactly(parts: m.SDXLParts):
    target, ref = tiny_sdxl_components(seed=2), tiny_sdxl_components(seed=3)
    layer = "text_model.encoder.layers.0.mlp.fc1.weight"
    kept = m.with_text_model(target.text_encoder.state_dict())[layer].clone()
    m.restore_embeddings(target, m.embeddings_of(ref))
    for name in ("text_encoder", "text_encoder_2"):
        got, want = m.text_embeddings(getattr(target, name)), m.text_embeddings(getattr(ref, name))
        assert torch.equal(got.token_embedding.weight, want.token_embedding.weight)
        assert torch.equal(got.position_embedding.weight, want.position_embedding.weight)
    assert torch.equal(m.with_text_model(target.text_encoder.state_dict())[layer], kept)
    assert hasattr(target.text_encoder_2, "text_model")  # both layouts were walked


def test_restore_embeddings_refuses_another_vocabulary():
    target, ref = tiny_sdxl_components(seed=0), tiny_sdxl_components(seed=1)
    ref.text_encoder.resize_token_embeddings(100)
    with pytest.raises(InputError, match="text_encoder token_embedding"):
        m.restore_embeddings(target, m.embeddings_of(ref))


# ---------------------------------------------------------------- bad inputs
# Each is refused by check_model_path from configs and headers: weight files are garbage
# where present, so any attempt to load them would fail with another error.


def sd15_folder(root: Path) -> Path:
    """An SD 1.5-shaped diffusers folder: no text_encoder_2, a UNet without text_time."""
    root.mkdir()
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ).save_config(root / "unet")  # fmt: skip
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    return root


def copy_configs(src: Path, dst: Path) -> Path:
    """The folder's configs and tokenizers, each weight file replaced by garbage."""
    shutil.copytree(src, dst)
    for weights in dst.rglob("*.safetensors"):
        weights.write_bytes(b"garbage")
    return dst


def test_missing_path_is_named(tmp_path: Path):
    with pytest.raises(InputError, match="nowhere.safetensors does not exist"):
        m.check_model_path(tmp_path / "nowhere.safetensors")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_files_are_refused_unless_allowed(tmp_path: Path, tiny_config_dir: Path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not even a pickle")
    with pytest.raises(InputError, match="pickle checkpoint.*allow_pickle"):
        m.check_model_path(path, config_dir=tiny_config_dir)
    source = m.check_model_path(path, allow_pickle=True, config_dir=tiny_config_dir)
    assert (source.kind, source.config_dir) == ("single_file", tiny_config_dir)


def test_pickle_weights_in_a_folder_are_refused(tmp_path: Path, tiny_sdxl_dir: Path):
    folder = copy_configs(tiny_sdxl_dir, tmp_path / "bin")
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_suffix(".bin"))
    with pytest.raises(InputError, match=r"unet holds only pickle weights"):
        m.check_model_path(folder)


def test_other_suffixes_are_refused(tmp_path: Path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(InputError, match="expected a .safetensors file or a diffusers folder"):
        m.check_model_path(tmp_path / "model.gguf")


def test_single_file_config_dir_must_be_a_folder(tmp_path: Path, parts: m.SDXLParts):
    path = m.save_single_file(parts, tmp_path / "model.safetensors", torch.float16)
    with pytest.raises(InputError, match="is not a folder"):
        m.check_model_path(path, config_dir=tmp_path / "absent")


def test_single_file_config_dir_needs_no_weights(tmp_path: Path, tiny_sdxl_dir: Path, parts):
    path = m.save_single_file(parts, tmp_path / "model.safetensors", torch.float16)
    configs = copy_configs(tiny_sdxl_dir, tmp_path / "configs")
    for weights in configs.rglob("*.safetensors"):
        weights.unlink()
    assert m.check_model_path(path, config_dir=configs).config_dir == configs


def test_sd15_folder_is_not_sdxl(tmp_path: Path):
    with pytest.raises(InputError, match="is not SDXL: model_index.json .* no text_encoder_2"):
        m.check_model_path(sd15_folder(tmp_path / "sd15"))


def test_unet_without_text_time_is_not_sdxl(tmp_path: Path, tiny_sdxl_dir: Path):
    folder = copy_configs(tiny_sdxl_dir, tmp_path / "odd")
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["addition_embed_type"] = None
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="is not SDXL: unet/config.json has addition_embed"):
        m.check_model_path(folder)


def test_sd15_config_dir_is_not_sdxl(tmp_path: Path, parts: m.SDXLParts):
    path = m.save_single_file(parts, tmp_path / "model.safetensors", torch.float16)
    with pytest.raises(InputError, match="is not SDXL"):
        m.check_model_path(path, config_dir=sd15_folder(tmp_path / "sd15"))


def test_folder_missing_a_component_or_index(tmp_path: Path, tiny_sdxl_dir: Path):
    folder = copy_configs(tiny_sdxl_dir, tmp_path / "partial")
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(InputError, match="lacks SDXL component files: tokenizer_2/"):
        m.check_model_path(folder)
    (folder / "model_index.json").unlink()
    with pytest.raises(InputError, match="model_index.json is missing"):
        m.check_model_path(folder)


def test_sd15_single_file_is_not_sdxl(tmp_path: Path):
    path = tmp_path / "sd15.safetensors"
    keys = ("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.conv_in.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight")  # fmt: skip
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    with pytest.raises(
        InputError, match="is not SDXL: .*conditioner.embedders.1.*cond_stage_model"
    ):
        m.check_model_path(path)


def test_single_file_without_a_vae_is_refused(tmp_path: Path, parts: m.SDXLParts):
    models = {name: getattr(parts, name) for name in m.MODELS}
    state = {k: v for k, v in m.sgm_state(models).items() if not k.startswith("first_stage")}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "novae.safetensors"))
    with pytest.raises(InputError, match=r"lacks the VAE \(first_stage_model"):
        m.check_model_path(tmp_path / "novae.safetensors")


def test_corrupt_safetensors_is_refused(tmp_path: Path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        m.check_model_path(tmp_path / "broken.safetensors")
