"""UNet module names, diffusers -> SGM (kohya / A1111 / ComfyUI): checked against
diffusers' own SGM -> diffusers conversion on the full SDXL 1.0 UNet (meta device)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from kohaku.sdxl.configs import SDXL_UNET
from kohaku.sdxl.names import UnetLayout, sgm_module_path, underscore_table


@pytest.fixture(scope="module")
def sdxl_unet():
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(SDXL_UNET)


def test_every_sdxl_unet_weight_maps_back_through_diffusers_converter(sdxl_unet):
    layout = UnetLayout.from_config(dict(sdxl_unet.config))
    assert layout == UnetLayout(2, (0, 1))
    keys = list(sdxl_unet.state_dict())
    sgm = {"model.diffusion_model." + sgm_module_path(k, layout): k for k in keys}
    assert len(sgm) == len(keys) == 1680  # one SGM name per weight
    converted = convert_ldm_unet_checkpoint(dict.fromkeys(sgm, 0), dict(sdxl_unet.config))
    assert set(converted) == set(keys)


def test_known_kohya_names(sdxl_unet):
    table = underscore_table([n for n, _ in sdxl_unet.named_modules()])
    assert table["down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"] == (
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q")  # fmt: skip
    assert table["mid_block_attentions_0_proj_in"] == "middle_block_1_proj_in"
    assert table["up_blocks_0_resnets_2_conv_shortcut"] == "output_blocks_2_0_skip_connection"
    assert table["up_blocks_1_upsamplers_0_conv"] == "output_blocks_5_2_conv"
    assert table["down_blocks_1_downsamplers_0_conv"] == "input_blocks_6_0_op"
    assert "" not in table


def test_unknown_module_is_an_error():
    with pytest.raises(ValueError, match="no SGM name"):
        sgm_module_path("encoder.layers.0")
