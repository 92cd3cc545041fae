"""The sampler's prompt conditioning: the training encoder's chunks of 75 tokens handed to the
diffusers pipeline as embeddings. Short prompts get exactly the pipeline's own conditioning;
long ones reach the UNet whole, without diffusers' "truncated" warning; the keep separator
stays out of the prompts. Its schedule: a zero-terminal-SNR model is sampled with trailing
timesteps and CFG rescale; an unmarked base as the run trained it."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.utils import logging as diffusers_logging

from kohaku.evaluate.generate import (
    Checkpoint,
    Job,
    Sampler,
    guidance_rescale,
    sampling_source,
)
from kohaku.evaluate.run import plan
from kohaku.sdxl.model import check_model_path, save_single_file
from kohaku.sdxl.text import encode_text
from kohaku.sdxl.tiny import tiny_sdxl_components
from kohaku.train.config import TrainConfig
from tests.evaluate.conftest import tiny_config

CPU = torch.device("cpu")
LONG = ", ".join(["girl"] * 50)  # 99 tokens of the tiny BPE: two chunks


def sampler_for(model, run, **over) -> Sampler:
    cfg = tiny_config(steps=1, batch_size=2, precision="fp32", seeds=[0], **over)
    sampler = Sampler(check_model_path(model), cfg, run, [])
    sampler.use(Checkpoint("base", 0, None))
    return sampler


@pytest.fixture(scope="module")
def sampler(tiny_sdxl_dir, tmp_path_factory) -> Sampler:
    return sampler_for(tiny_sdxl_dir, tmp_path_factory.mktemp("run"))


@torch.no_grad()
def test_short_prompts_get_the_pipelines_own_conditioning(sampler, tiny_sdxl_dir, tmp_path):
    prompts = ["1girl, hatsune miku, smile", "scenery"]
    ours = sampler.conditioning(prompts)
    pe, npe, ppe, nppe = sampler.pipe.encode_prompt(prompts, device=CPU)
    assert torch.equal(ours["prompt_embeds"], pe) and torch.equal(ours["pooled_prompt_embeds"], ppe)
    assert torch.equal(ours["negative_prompt_embeds"], npe)  # SDXL: zeros for no negative
    assert torch.equal(ours["negative_pooled_prompt_embeds"], nppe)
    negative = sampler_for(tiny_sdxl_dir, tmp_path, negative_prompt="lowres, bad hands")
    ours = negative.conditioning(prompts)
    want = negative.pipe.encode_prompt(
        prompts, device=CPU, negative_prompt=["lowres, bad hands"] * 2
    )
    keys = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds")  # the order encode_prompt returns  # fmt: skip
    for key, tensor in zip(keys, want, strict=True):
        torch.testing.assert_close(ours[key], tensor)


@pytest.fixture
def diffusers_warnings(caplog):
    diffusers_logging.enable_propagation()
    caplog.set_level(logging.WARNING)
    yield caplog
    diffusers_logging.disable_propagation()


@torch.no_grad()
def test_a_long_prompt_reaches_the_unet_whole(sampler, diffusers_warnings) -> None:
    seen = []
    hook = sampler.parts.unet.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        sampler.pipe(prompt=[LONG], num_inference_steps=1, width=64, height=64)  # diffusers' own
        assert "truncated because CLIP can only handle" in diffusers_warnings.text
        assert seen[-1].shape == (2, 77, 80)
        diffusers_warnings.clear()
        (picture,) = sampler.sample([Job("p", LONG, 0)])
    finally:
        hook.remove()
    assert "truncated" not in diffusers_warnings.text and picture.size == (64, 64)
    assert seen[-1].shape == (2, 154, 80)  # negative and prompt, two chunks each
    text = encode_text(sampler.parts, [LONG], 225, CPU)
    assert torch.equal(seen[-1][1:], text.hidden) and not seen[-1][0].any()


def test_prompts_carry_no_keep_separator(eval_run) -> None:
    p = plan(tiny_config(layout="hakubooru"), eval_run)
    assert p.jobs and all("|||" not in job.prompt for job in p.jobs)
    assert any("|||" in prompt for prompt in p.prompts.frame["prompt"])  # the layout's caption


@torch.no_grad()
def test_a_zero_terminal_snr_model_samples_trailing_steps_with_cfg_rescale(sampler, tmp_path):
    """A v-prediction zero-terminal-SNR file (its v_pred / ztsnr keys): Euler on the rescaled
    betas with trailing timesteps, the first at t = 999 (pure noise), and the paper's CFG
    rescale 0.7 unless set; SDXL's own schedule adds nothing to the pictures' keys."""
    parts = tiny_sdxl_components(0)
    parts.noise_scheduler = DDPMScheduler.from_config(
        parts.noise_scheduler.config, prediction_type="v_prediction",
        rescale_betas_zero_snr=True, timestep_spacing="trailing")  # fmt: skip
    path = save_single_file(parts, tmp_path / "ztsnr.safetensors", torch.float32)
    ztsnr = sampler_for(path, tmp_path / "run")
    config = ztsnr.pipe.scheduler.config
    assert (config.prediction_type, config.timestep_spacing) == ("v_prediction", "trailing")
    assert config.rescale_betas_zero_snr
    ztsnr.pipe.scheduler.set_timesteps(2)
    assert ztsnr.pipe.scheduler.timesteps.tolist() == [999.0, 499.0]
    assert ztsnr.guidance_rescale == 0.7 and sampler.guidance_rescale == 0.0
    assert ztsnr.schedule_settings() == {
        "prediction": "v_prediction",
        "zero_terminal_snr": True,
        "guidance_rescale": 0.7,
    }
    assert sampler.schedule_settings() == {}  # epsilon: earlier evaluations keep their keys
    (rescaled,) = ztsnr.sample([Job("p", "1girl", 0)])
    ztsnr.guidance_rescale = 0.0
    (plain,) = ztsnr.sample([Job("p", "1girl", 0)])
    assert np.asarray(rescaled).std() > 0 and not np.array_equal(
        np.asarray(rescaled), np.asarray(plain)
    )


def test_an_unmarked_base_is_sampled_as_the_run_trained_it(tiny_sdxl_dir, tmp_path):
    """A single file that says nothing takes the run's `train.loss` schedule, as in
    training; a base that says what it is keeps its own."""
    train = tmp_path / "train"
    train.mkdir()
    loss = {"prediction": "v_prediction", "zero_terminal_snr": True}
    cfg = TrainConfig.model_validate({"model": {"path": str(tiny_sdxl_dir)}, "loss": loss})
    (train / "config.json").write_text(cfg.model_dump_json())
    folder = check_model_path(tiny_sdxl_dir)  # its scheduler says epsilon
    assert sampling_source(folder, tmp_path) == folder
    silent = sampling_source(replace(folder, declared=False), tmp_path)
    assert (silent.prediction, silent.zero_snr) == ("v_prediction", True)
    assert guidance_rescale(tiny_config(), silent) == 0.7
    assert guidance_rescale(tiny_config(guidance_rescale=0.0), silent) == 0.0
