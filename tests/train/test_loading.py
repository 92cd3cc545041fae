"""Loading SDXL (kohaku.sdxl.model, .streaming, .saving) on the tiny model: a single file
with nothing beside it, streamed tensor by tensor into the training precision, equal to what
diffusers' own loader reads; v-prediction files; embeddings read from a reference alone."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from kohaku.errors import ConfigError, InputError
from kohaku.sdxl import lokr
from kohaku.sdxl import model as m
from kohaku.sdxl.configs import public
from kohaku.sdxl.tiny import tiny_sdxl_components
from kohaku.train.config import TrainConfig
from kohaku.train.run import check_inputs
from tests.train.rundir import write_training_run

CLASSES = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
           "text_encoder_2": CLIPTextModelWithProjection}  # fmt: skip


@pytest.fixture(scope="module")
def parts() -> m.SDXLParts:
    return tiny_sdxl_components(seed=0)


def lone_file(folder: Path, parts: m.SDXLParts, dtype=torch.float32) -> Path:
    """A single file alone in its own folder."""
    folder.mkdir()
    return m.save_single_file(parts, folder / "model.safetensors", dtype)


def rewrite(path: Path, out: Path, add=None, drop=(), metadata=True) -> Path:
    """The file with tensors added or dropped (and its metadata kept or not)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = {k: v for k, v in load_file(str(path)).items() if k not in drop} | (add or {})
    save_file(state, str(out), metadata=meta if metadata else None)
    return out


def assert_same_weights(got: m.SDXLParts, want: dict[str, dict[str, torch.Tensor]], dtype):
    for name in m.MODELS:
        state = getattr(got, name).state_dict()
        assert state.keys() == want[name].keys(), name
        for key, value in want[name].items():
            assert state[key].dtype == (torch.float32 if name == "vae" else dtype), key
            assert torch.equal(state[key], value.to(state[key].dtype)), key


def test_a_kohaku_single_file_loads_with_nothing_beside_it(tmp_path, parts):
    path = lone_file(tmp_path / "alone", parts)
    assert list(path.parent.iterdir()) == [path]
    source = m.check_model_path(path)  # no config_dir: the configs are in the metadata
    assert (source.kind, source.config_dir, source.prediction) == ("single_file", None, "epsilon")
    loaded = m.load_sdxl(source)
    want = {name: getattr(parts, name).state_dict() for name in m.MODELS}
    assert_same_weights(loaded, want, torch.float32)
    for prompt in ("1girl at the mat", "the girl"):
        for name in ("tokenizer", "tokenizer_2"):
            a, b = getattr(loaded, name), getattr(parts, name)
            kw = {"padding": "max_length", "max_length": 77}
            assert a(prompt, **kw).input_ids == b(prompt, **kw).input_ids
    schedule = [public(dict(p.noise_scheduler.config)) for p in (loaded, parts)]
    assert schedule[0] == schedule[1]
    assert not any(p.requires_grad for p in loaded.unet.parameters())  # frozen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_file_and_folder_equal_diffusers_own_loader(tmp_path, tiny_sdxl_dir, dtype):
    """Single file and diffusers folder, both streamed, hold exactly what diffusers' and
    transformers' from_pretrained read from the folder (the same seed-0 weights)."""
    want = {name: cls.from_pretrained(tiny_sdxl_dir, subfolder=name).state_dict()
            for name, cls in CLASSES.items()}  # fmt: skip
    path = m.save_single_file(tiny_sdxl_components(0), tmp_path / "m.safetensors", torch.float32)
    for source in (m.check_model_path(path), m.check_model_path(tiny_sdxl_dir)):
        loaded = m.load_sdxl(source, dtype, vae_dtype=torch.float32)
        assert_same_weights(loaded, want, dtype)


def test_half_precision_base_keeps_lokr_and_its_gradients_in_float32(tmp_path, parts):
    source = m.check_model_path(lone_file(tmp_path / "f", parts, torch.float16))
    bf16 = m.load_sdxl(source, torch.bfloat16, vae_dtype=m.vae_dtype_for(torch.bfloat16))
    assert {p.dtype for p in bf16.unet.parameters()} == {torch.bfloat16} == {
        p.dtype for p in bf16.text_encoder_2.parameters()}  # fmt: skip
    assert bf16.vae.dtype == torch.bfloat16  # bf16 has fp32's range: no overflow
    assert m.vae_dtype_for(torch.float16) == torch.float32  # SDXL's VAE overflows in fp16
    adapters = lokr.attach(lokr.load_preset("delta"), {"unet": bf16.unet}, seed=0)
    params = adapters.parameters("unet")
    assert params and {p.dtype for p in params} == {torch.float32}
    cond = {"text_embeds": torch.zeros(1, 32), "time_ids": torch.zeros(1, 6)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bf16.unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 80),
                        added_cond_kwargs=cond).sample  # fmt: skip
    out.float().pow(2).mean().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_v_prediction_files_are_recognised_and_a_mismatch_is_a_config_error(tmp_path, parts):
    v_parts = tiny_sdxl_components(0)
    v_parts.noise_scheduler = DDPMScheduler.from_config(
        parts.noise_scheduler.config, prediction_type="v_prediction")  # fmt: skip
    own = lone_file(tmp_path / "kohaku", v_parts)
    assert "v_pred" in load_file(str(own))  # ComfyUI's marker, written by kohaku too
    source = m.check_model_path(own)
    assert (source.prediction, source.zero_snr) == ("v_prediction", False)
    assert m.load_sdxl(source).prediction == "v_prediction"
    # a ComfyUI-style file: the markers alone decide, whatever the rest says
    plain = lone_file(tmp_path / "eps", parts)
    marked = rewrite(plain, tmp_path / "ztsnr.safetensors",
                     add={"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])})  # fmt: skip
    source = m.check_model_path(marked)
    assert (source.prediction, source.zero_snr) == ("v_prediction", True)
    sched = m.load_sdxl(source).noise_scheduler
    assert sched.config.rescale_betas_zero_snr and sched.config.timestep_spacing == "trailing"
    assert sched.alphas_cumprod[-1] == 0  # zero terminal SNR
    run = write_training_run(tmp_path / "run", n=2, buckets=((64, 64),))
    cfg = {"model": {"path": str(marked)}, "batch_size": 2, "layout": "epsilon"}
    with pytest.raises(ConfigError, match='v_prediction model but train.loss.prediction is '
                       '"epsilon": set train.loss.prediction = "v_prediction"'):  # fmt: skip
        check_inputs(TrainConfig.model_validate(cfg), run)
    zero = ("has a zero-terminal-SNR schedule .* but train.loss.zero_terminal_snr is false: "
            "set train.loss.zero_terminal_snr = true")  # fmt: skip
    with pytest.raises(ConfigError, match=zero):
        check_inputs(TrainConfig.model_validate(cfg | {"loss": {"prediction": "v_prediction"}}),
                     run)  # fmt: skip
    ztsnr = {"prediction": "v_prediction", "zero_terminal_snr": True}
    assert check_inputs(TrainConfig.model_validate(cfg | {"loss": ztsnr}), run) == source
    with pytest.raises(ConfigError, match="epsilon model but"):
        check_inputs(
            TrainConfig.model_validate(
                cfg | {"model": {"path": str(plain)}, "loss": {"prediction": "v_prediction"}}
            ),
            run,
        )


def changed_tensors(before: m.SDXLParts, after: m.SDXLParts) -> set[str]:
    return {f"{name}.{k}" for name in m.MODELS
            for k, v in getattr(before, name).state_dict().items()
            if not torch.equal(v, getattr(after, name).state_dict()[k])}  # fmt: skip


def test_restore_embeddings_reads_the_four_tables_of_a_file_or_folder(
    tmp_path, tiny_sdxl_dir, parts
):
    ref = tiny_sdxl_components(seed=3)
    full = m.save_single_file(ref, tmp_path / "ref.safetensors", torch.float16)
    keys = m.embedding_keys("single_file").values()
    # a file of the 4 tables alone is enough: nothing else of the reference is read
    alone = rewrite(full, tmp_path / "tables.safetensors",
                    drop=[k for k in load_file(str(full)) if k not in keys])  # fmt: skip
    assert len(load_file(str(alone))) == 4
    base = tiny_sdxl_components(seed=2)
    for path, want in ((full, ref), (alone, ref), (tiny_sdxl_dir, parts)):  # the folder: seed 0
        target = copy.deepcopy(base)
        m.restore_embeddings(target, m.read_embeddings(path))
        assert changed_tensors(base, target) == {
            "text_encoder.embeddings.token_embedding.weight",
            "text_encoder.embeddings.position_embedding.weight",
            "text_encoder_2.text_model.embeddings.token_embedding.weight",
            "text_encoder_2.text_model.embeddings.position_embedding.weight"}  # fmt: skip
        for name, tables in m.embeddings_of(target).items():
            for table, weight in tables.items():
                expect = m.embeddings_of(want)[name][table]
                if path != tiny_sdxl_dir:
                    expect = expect.half()  # the fp16 file's values
                assert torch.equal(weight, expect.float()), (path, name, table)
    cut = rewrite(alone, tmp_path / "cut.safetensors", drop=[list(keys)[-1]])
    with pytest.raises(InputError, match="lacks the text_encoder_2 position_embedding tensors"):
        m.locate_embeddings(cut)


def test_a_file_without_configs_is_checked_against_sdxl_1_0(tmp_path, parts, tiny_config_dir):
    bare = rewrite(lone_file(tmp_path / "f", parts), tmp_path / "bare.safetensors",
                   metadata=False)  # fmt: skip
    with pytest.raises(InputError, match=r"bare.safetensors lacks \d+ SDXL tensors \(SDXL 1.0's; "
                       r"set config_dir to a diffusers folder that describes it\)"):  # fmt: skip
        m.check_model_path(bare)
    loaded = m.load_sdxl(m.check_model_path(bare, config_dir=tiny_config_dir))
    assert torch.equal(loaded.unet.conv_in.weight, parts.unet.conv_in.weight)


def test_the_trainer_holds_a_half_base_and_float32_lokr_and_optimizer_state(tmp_path, parts):
    from kohaku.train.loop import Dist, Trainer

    run = write_training_run(tmp_path / "run", n=2, buckets=((64, 64),))
    cfg = TrainConfig.model_validate({
        "model": {"path": str(lone_file(tmp_path / "m", parts, torch.float16))},
        "batch_size": 2, "max_steps": 1, "precision": "fp16", "layout": "epsilon",
        "optim": {"kind": "adamw", "warmup_steps": 0}, "checkpoint_every": 100,
    })  # fmt: skip
    trainer = Trainer(cfg, run, Dist(0, 1, torch.device("cpu")))
    held = {name: {p.dtype for p in getattr(trainer.parts, name).parameters()}
            for name in m.MODELS}  # fmt: skip
    assert held == {
        "unet": {torch.float16},
        "vae": {torch.float32},
        "text_encoder": {torch.float16},
        "text_encoder_2": {torch.float16},
    }
    assert trainer.train() == {"status": "done", "step": 1}
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if t.ndim]
    lokr_params = [p for net in trainer.adapters.networks.values() for p in net.parameters()]
    assert state and {t.dtype for t in state + lokr_params} == {torch.float32}
