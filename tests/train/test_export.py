"""`[train.export]`: the streamed merge (kohaku.merge) equals lycoris' own merge of the whole
model, keeps every key of the base file, records the prediction type, writes finite tensors
with the umask's file mode, from a single file or a diffusers folder, to either format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kohaku.errors import InputError
from kohaku.sdxl import lokr
from kohaku.sdxl.model import MODELS, ModelSource, check_model_path, sgm_state, with_text_model
from kohaku.sdxl.tiny import tiny_sdxl_components
from kohaku.train.export import export_merged
from tests.merge.reference import lycoris_merged

EXTRA = {  # keys of real SDXL single files that no module's state_dict gives back
    "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.arange(77)[
        None
    ],
    "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6052),
}


@pytest.fixture(scope="module")
def lokr_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One delta-preset LoKr (w2 non-zero) saved as trained for epsilon, for v and for v
    on a zero-terminal-SNR schedule."""
    parts = tiny_sdxl_components(0)
    models = {c: getattr(parts, c) for c in ("unet", "text_encoder", "text_encoder_2")}
    adapters = lokr.attach(lokr.load_preset("delta"), models, seed=0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for net in adapters.networks.values():
            for name, p in net.named_parameters():
                if name.endswith("lokr_w2"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    root = tmp_path_factory.mktemp("lokr")
    files = {
        pred: lokr.save(adapters, root / f"{pred}.safetensors", torch.float32, prediction=pred)
        for pred in ("epsilon", "v_prediction")
    }
    files["ztsnr"] = lokr.save(adapters, root / "ztsnr.safetensors", torch.float32,
                               prediction="v_prediction", zero_snr=True)  # fmt: skip
    return files


@pytest.fixture(scope="module")
def reference(tiny_sdxl_dir: Path, lokr_files: dict[str, Path]):
    """lycoris' merge of the whole tiny model (the same for both LoKr files)."""
    return lycoris_merged(tiny_sdxl_dir, lokr_files["epsilon"])


def base_file(folder: Path, v_pred: bool, ztsnr: bool = False) -> Path:
    """The tiny SDXL as an official-layout single file, with the keys loaders drop."""
    parts = tiny_sdxl_components(0)
    with torch.no_grad():
        state = {
            k: v.contiguous() for k, v in sgm_state({m: getattr(parts, m) for m in MODELS}).items()
        }
    state |= EXTRA | ({"v_pred": torch.tensor([])} if v_pred else {})
    state |= {"ztsnr": torch.tensor([])} if ztsnr else {}
    path = folder / f"base-{'v' if v_pred else 'eps'}{'-ztsnr' if ztsnr else ''}.safetensors"
    save_file(state, str(path), metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base"})
    return path


def all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v.float()).all()) for v in tensors.values())


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_single_file_export_keeps_every_key_and_equals_the_lycoris_merge(
    tmp_path: Path, tiny_sdxl_dir: Path, lokr_files, reference, umask_022
):
    base = base_file(tmp_path, v_pred=True)
    out = export_merged(ModelSource(base, "single_file"), lokr_files["v_prediction"],
                        tmp_path / "merged.safetensors", "single_file", "fp32")  # fmt: skip
    got, want = load_file(str(out)), load_file(str(base))
    assert got.keys() == want.keys()  # position_ids, logit_scale and v_pred included
    for key in (*EXTRA, "v_pred"):
        assert torch.equal(got[key], want[key]) and got[key].dtype == want[key].dtype, key
    with torch.no_grad():
        merged = sgm_state({m: getattr(reference, m) for m in MODELS})
    for key, value in merged.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert sum(not torch.equal(got[k], want[k]) for k in merged) > 20  # the LoKr is in
    assert all_finite(got)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert meta["modelspec.prediction_type"] == "v"
    assert meta["modelspec.title"] == "merged"
    assert out.stat().st_mode & 0o777 == 0o644


def test_diffusers_base_to_both_formats_streamed(
    tmp_path: Path, tiny_sdxl_dir: Path, lokr_files, reference, umask_022
):
    """A v-trained LoKr on an epsilon folder: the single file gains the v_pred marker, the
    folder's scheduler says v_prediction; the folder's weights equal lycoris' merge."""
    source, lokr_v = ModelSource(tiny_sdxl_dir, "diffusers"), lokr_files["v_prediction"]
    single = export_merged(source, lokr_v, tmp_path / "m.safetensors", "single_file", "fp16")
    tensors = load_file(str(single))
    assert tensors["v_pred"].numel() == 0 and all_finite(tensors)
    with safe_open(str(single), "pt") as f:
        assert f.metadata()["modelspec.prediction_type"] == "v"
    folder = export_merged(source, lokr_v, tmp_path / "merged", "diffusers", "fp16")
    for name in MODELS:
        weights = "model" if name.startswith("text") else "diffusion_pytorch_model"
        got = load_file(str(folder / name / f"{weights}.safetensors"))
        base = load_file(str(tiny_sdxl_dir / name / f"{weights}.safetensors"))
        assert got.keys() == base.keys() and all_finite(got), name
        want = getattr(reference, name).state_dict()
        want = with_text_model(want) if name.startswith("text") else want
        for key, value in got.items():
            assert value.dtype == torch.float16, key
            torch.testing.assert_close(value.float(), want[key], atol=2e-3, rtol=1e-2, msg=key)
        assert (folder / name / f"{weights}.safetensors").stat().st_mode & 0o777 == 0o644
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    assert (folder / "tokenizer_2").is_dir() and (folder / "model_index.json").is_file()


def test_epsilon_lokr_on_a_v_prediction_base_is_refused(tmp_path: Path, lokr_files):
    base = base_file(tmp_path, v_pred=True)
    with pytest.raises(InputError, match="trained for epsilon, but model base .* v-prediction"):
        export_merged(ModelSource(base, "single_file"), lokr_files["epsilon"],
                      tmp_path / "merged.safetensors", "single_file")  # fmt: skip
    assert not (tmp_path / "merged.safetensors").exists()


def test_diffusers_export_from_a_single_file(
    tmp_path: Path, tiny_sdxl_dir: Path, lokr_files, reference
):
    """The minimal path (the streamed merge, then diffusers' single-file loader)."""
    base = base_file(tmp_path, v_pred=False)
    source = ModelSource(base, "single_file", tiny_sdxl_dir)
    folder = export_merged(source, lokr_files["epsilon"], tmp_path / "out", "diffusers", "fp32")
    got = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    for key, value in reference.unet.state_dict().items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert not list(tmp_path.glob(".out.*"))  # the intermediate single file is removed


def test_a_zero_terminal_snr_lokr_marks_what_it_is_merged_into(
    tmp_path: Path, tiny_sdxl_dir: Path, lokr_files
):
    """A v-prediction zero-terminal-SNR LoKr on bases that do not say so (an epsilon single
    file, an epsilon folder, a single file exported as a folder): the single file carries
    both keys ComfyUI, A1111 and Forge read and ModelSpec `v`; a folder's scheduler has
    rescaled betas and trailing timesteps; kohaku reads either back as what it is."""
    ztsnr, base = lokr_files["ztsnr"], base_file(tmp_path, v_pred=False)
    single = export_merged(ModelSource(base, "single_file"), ztsnr, tmp_path / "m.safetensors",
                           "single_file", "fp16")  # fmt: skip
    tensors = load_file(str(single))
    assert tensors["v_pred"].numel() == tensors["ztsnr"].numel() == 0 and all_finite(tensors)
    with safe_open(str(single), "pt") as f:
        assert f.metadata()["modelspec.prediction_type"] == "v"
    read = check_model_path(single, config_dir=tiny_sdxl_dir)
    assert (read.prediction, read.zero_snr) == ("v_prediction", True)
    sources = {"from-folder": ModelSource(tiny_sdxl_dir, "diffusers"),
               "from-file": ModelSource(base, "single_file", tiny_sdxl_dir)}  # fmt: skip
    for name, source in sources.items():
        folder = export_merged(source, ztsnr, tmp_path / name, "diffusers", "fp16")
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["prediction_type"] == "v_prediction", name
        assert scheduler["rescale_betas_zero_snr"] and scheduler["timestep_spacing"] == "trailing"
        assert check_model_path(folder).zero_snr, name


def test_a_lokr_trained_without_zero_terminal_snr_on_a_ztsnr_base_is_refused(
    tmp_path: Path, lokr_files
):
    base = base_file(tmp_path, v_pred=True, ztsnr=True)
    with pytest.raises(InputError, match="trained without zero terminal SNR, but model base"):
        export_merged(ModelSource(base, "single_file"), lokr_files["v_prediction"],
                      tmp_path / "merged.safetensors", "single_file")  # fmt: skip
    out = export_merged(ModelSource(base, "single_file"), lokr_files["ztsnr"],
                        tmp_path / "merged.safetensors", "single_file")  # fmt: skip
    assert {"v_pred", "ztsnr"} <= load_file(str(out)).keys()  # the base's own, kept
