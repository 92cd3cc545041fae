"""The sampler's prompt conditioning: the training encoder's chunks of 75 tokens handed to the
diffusers pipeline as embeddings. Short prompts get exactly the pipeline's own conditioning;
long ones reach the UNet whole, without diffusers' "truncated" warning; the keep separator
stays out of the prompts."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from kohaku.evaluate.generate import Checkpoint, Job, Sampler
from kohaku.evaluate.stage import plan
from kohaku.train.model import check_model_path
from kohaku.train.text import encode_text
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
