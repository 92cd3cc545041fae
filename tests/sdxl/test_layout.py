"""kohaku.sdxl.layout at full size, on the meta device (nothing allocated): every tensor of
the official SDXL 1.0 single file maps to a module tensor and back, and diffusers' own
single-file converters agree with the table."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)

from kohaku.errors import InputError
from kohaku.sdxl import layout
from kohaku.sdxl import model as m
from kohaku.sdxl.configs import SDXLConfigs, empty_models
from kohaku.sdxl.tensors import Header, TensorSpec

# The official file (sd_xl_base_1.0.safetensors): 2,515 tensors
OFFICIAL = {"unet": 1680, "vae": 248, "text_encoder": 197, "text_encoder_2": 390}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return empty_models(SDXLConfigs.builtin())


@pytest.fixture(scope="module")
def sgm(models) -> dict[str, torch.Tensor]:
    """The official file's tensors as meta tensors (plus the two extras, real and small)."""
    return layout.sgm_state(models, extras=True)


def test_the_table_names_every_official_tensor(models, sgm):
    counts = {name: sum(k.startswith(p) for k in sgm) for name, p in layout.PARTS.items()}
    assert counts == OFFICIAL and len(sgm) == 2515
    assert sum(p.numel() for mod in models.values() for p in mod.parameters()) == 3_468_837_867
    assert {
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn1.to_q.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight",
        "model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
        "conditioner.embedders.1.model.positional_embedding",
    } <= set(sgm)  # fmt: skip
    shapes = {k: tuple(v.shape) for k, v in sgm.items()}
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"] \
        == (3 * 1280, 1280)  # fmt: skip
    assert shapes["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    ids = sgm["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77)[None])
    assert sgm["conditioner.embedders.1.model.logit_scale"].shape == ()


def test_every_sgm_tensor_splits_back_into_module_tensors_once(models, sgm):
    plan = layout.sgm_plan(models)
    assert set(plan) | set(layout.EXTRAS) == set(sgm)
    states = {name: mod.state_dict() for name, mod in models.items()}
    seen = []
    for key, piece in plan.items():
        for name, value in zip(piece.names, layout.from_sgm(piece, sgm[key]), strict=True):
            assert value.shape == states[piece.model][name].shape, key
            seen.append((piece.model, name))
    assert sorted(seen) == sorted((n, k) for n, s in states.items() for k in s)


def test_diffusers_converters_agree_with_the_table(models, sgm):
    """diffusers' own SGM -> diffusers code maps every official name onto the same tensors."""
    part = lambda name: {k: v for k, v in sgm.items() if k.startswith(layout.PARTS[name])}  # noqa: E731
    unet = convert_ldm_unet_checkpoint(part("unet"), dict(models["unet"].config))
    vae = convert_ldm_vae_checkpoint(part("vae"), dict(models["vae"].config))
    te1 = convert_ldm_clip_checkpoint(part("text_encoder"),
                                      remove_prefix=layout.PARTS["text_encoder"])  # fmt: skip
    te2 = convert_open_clip_checkpoint(models["text_encoder_2"], part("text_encoder_2"),
                                       prefix=layout.PARTS["text_encoder_2"])  # fmt: skip
    for name, converted in (("unet", unet), ("vae", vae)):
        want = models[name].state_dict()
        assert {k: tuple(v.shape) for k, v in converted.items()} == {
            k: tuple(v.shape) for k, v in want.items()}, name  # fmt: skip
    te1.pop("text_model.embeddings.position_ids")
    assert set(te1) == {layout.full_name(k) for k in models["text_encoder"].state_dict()}
    te2_want = models["text_encoder_2"].state_dict()
    assert {k: tuple(v.shape) for k, v in te2.items()} == {
        k: tuple(v.shape) for k, v in te2_want.items()}  # fmt: skip


def header(sgm: dict[str, torch.Tensor], **change: tuple[int, ...]) -> Header:
    """A safetensors header of these names and shapes (no file needed for the check)."""
    specs = {k: TensorSpec(torch.float16, change.get(k, tuple(v.shape)), 0, 0)
             for k, v in sgm.items()}  # fmt: skip
    return Header(specs, {})


def test_builtin_configs_fit_the_official_shapes_and_name_a_mismatch(sgm, tmp_path):
    configs = SDXLConfigs.builtin()
    m.check_shapes(tmp_path / "sdxl.safetensors", header(sgm), configs, None)
    wide = "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight"
    want = rf"not shaped like SDXL 1.0 \(1 tensors differ, e.g. {wide} \(10240, 1280\) "
    with pytest.raises(InputError, match=want + r"\(expected \(5120, 1280\)\)\): set config_dir"):
        m.check_shapes(tmp_path / "sdxl.safetensors", header(sgm, **{wide: (10240, 1280)}),
                       configs, None)  # fmt: skip


class MetaFile:
    """The official file as a tensor source of meta tensors (names in file order)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = {k: v.to("meta") for k, v in sorted(tensors.items())}

    def names(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def test_the_streamed_fill_of_the_official_layout_sets_every_parameter(sgm):
    """The loader's fill at full size on the meta device: every module parameter is put
    exactly once, in its dtype; position ids, logit scale and v_pred markers are skipped."""
    from kohaku.sdxl.streaming import fill

    models = empty_models(SDXLConfigs.builtin())  # fresh: fill replaces the parameters
    dtypes = dict.fromkeys(m.MODELS, torch.bfloat16) | {"vae": torch.float32}
    marked = sgm | {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
    fill(models, MetaFile(marked), layout.sgm_plan(models), dtypes, torch.device("meta"))
    for name, model in models.items():
        params = dict(model.named_parameters())
        assert {p.dtype for p in params.values()} == {dtypes[name]}, name
        assert not any(p.requires_grad for p in params.values())
    cut = MetaFile({k: v for k, v in sgm.items() if not k.endswith("diffusion_model.out.2.bias")})
    with pytest.raises(InputError, match=r"lacks 1 tensors, e.g. \[\('unet', 'conv_out.bias'\)"):
        fill(models, cut, layout.sgm_plan(models), dtypes, torch.device("meta"))
