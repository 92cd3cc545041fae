"""The train stage: bad inputs fail before any weight is loaded, with a message that says
what to fix; a good run goes through the launcher to a manifest; the Prefect flow."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kohaku.errors import ConfigError, InputError
from kohaku.sdxl.model import check_model_path, load_sdxl
from kohaku.stage import read_manifest
from kohaku.train.config import TrainConfig, check_bitsandbytes
from kohaku.train.run import check_inputs, run_train
from tests.merge.reference import lycoris_merged
from tests.train.rundir import write_training_run


def config(model, **kw) -> TrainConfig:
    base = {"model": {"path": str(model)}, "batch_size": 2, "max_steps": 2, "layout": "epsilon",
            "optim": {"kind": "adamw", "warmup_steps": 0}, "log_every": 1}  # fmt: skip
    return TrainConfig.model_validate({**base, **kw})


def test_bad_inputs_are_refused_before_any_weight_is_loaded(tiny_sdxl_dir, tmp_path):
    run = write_training_run(tmp_path / "run", n=4, buckets=((64, 64),))
    with pytest.raises(InputError, match="does not exist"):
        check_inputs(config(tmp_path / "nope"), run)
    sd15 = tmp_path / "sd15"
    shutil.copytree(tiny_sdxl_dir, sd15)
    unet = json.loads((sd15 / "unet" / "config.json").read_text())
    unet["addition_embed_type"] = None
    (sd15 / "unet" / "config.json").write_text(json.dumps(unet))
    with pytest.raises(InputError, match="not SDXL"):
        check_inputs(config(sd15), run)
    preset = tmp_path / "bad.toml"
    preset.write_text('[unet]\ntarget_module = ["SelfAttentionBlock"]\n'
                      '[text]\ntarget_module = ["CLIPAttention"]\n')  # fmt: skip
    with pytest.raises(ConfigError, match="SelfAttentionBlock"):
        check_inputs(config(tiny_sdxl_dir, adapter={"preset": str(preset)}), run)
    with pytest.raises(ConfigError, match="unknown LoKr preset"):
        check_inputs(config(tiny_sdxl_dir, adapter={"preset": "nope"}), run)
    with pytest.raises(ConfigError, match="train:"):  # 4 images, global batch 8
        check_inputs(config(tiny_sdxl_dir, batch_size=4, dist={"nproc_per_node": 2}), run)
    with pytest.raises(InputError, match="build the images first"):
        check_inputs(config(tiny_sdxl_dir), tmp_path / "empty")


def test_config_checks(tiny_sdxl_dir):
    with pytest.raises(ValueError, match="global_batch 100"):
        config(tiny_sdxl_dir, global_batch=100, grad_accum=4)
    assert config(tiny_sdxl_dir, global_batch=16, grad_accum=4, dist={"nproc_per_node": 2})
    with pytest.raises(ValueError, match="node_rank"):
        config(tiny_sdxl_dir, dist={"node_rank": 1})
    for bad in ("0.36.0", "0.39.1", "0.41.0"):
        with pytest.raises(ValueError, match="broken 8-bit optimizer"):
            check_bitsandbytes(bad)
    check_bitsandbytes("0.41.1")
    check_bitsandbytes("0.35.4")


def test_run_train_launches_the_trainer_and_writes_the_manifest(tiny_sdxl_dir, tmp_path):
    """Also exports the merged model as a single file and a diffusers folder (fp16); the
    single file reloads to the same UNet output as the in-memory merge."""
    run = write_training_run(tmp_path / "run", n=4, buckets=((64, 64),))
    lines = []
    cfg = config(tiny_sdxl_dir, optim={"kind": "adamw", "warmup_steps": 0, "lr_unet": 1e-2},
                 export={"formats": ["single_file", "diffusers"], "storage": "fp16"})  # fmt: skip
    manifest = run_train(cfg, run, lines.append, env={"OMP_NUM_THREADS": "1"})
    assert manifest.counts["steps"] == 2 and manifest.counts["final_loss"] > 0
    tokenizer = load_sdxl(check_model_path(tiny_sdxl_dir)).tokenizer
    full = [f"count{i}, character{i}, copyright{i}, a{i}, b{i}, c{i}, masterpiece, highres, safe"
            for i in range(100, 104)]  # the epsilon layout of tests/train/rundir.py  # fmt: skip
    most = max(len(ids) for ids in tokenizer(full, add_special_tokens=False).input_ids)
    assert {k: manifest.counts[k] for k in ("captions", "caption_tokens_max", "captions_cut",
            "captions_drawn", "captions_over_max_tokens")} == {  # fmt: skip
        "captions": 4, "caption_tokens_max": most, "captions_cut": 0, "captions_drawn": 4,
        "captions_over_max_tokens": 0}  # fmt: skip
    assert read_manifest(run / "train") == manifest
    assert any(line.startswith("kohaku-train ") for line in lines)
    lokr_file = run / "train" / manifest.outputs["lokr"]
    merged = lycoris_merged(tiny_sdxl_dir, lokr_file).unet
    base = load_sdxl(check_model_path(tiny_sdxl_dir)).unet
    single = run / "train" / manifest.outputs["merged_single_file"]
    reloaded = load_sdxl(check_model_path(single, config_dir=tiny_sdxl_dir)).unet
    folder = load_sdxl(check_model_path(run / "train" / manifest.outputs["merged_diffusers"])).unet
    outs = [unet_output(m) for m in (merged, reloaded, folder, base)]
    torch.testing.assert_close(outs[1], outs[0], atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(outs[2], outs[0], atol=2e-3, rtol=1e-2)
    assert (outs[3] - outs[0]).abs().max() > 1e-3  # the LoKr changed the model


def unet_output(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    x = torch.randn(1, 4, 8, 8, generator=g)
    hidden = torch.randn(1, 77, cfg.cross_attention_dim, generator=g)
    pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    cond = {"text_embeds": torch.randn(1, pooled_dim, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}  # fmt: skip
    with torch.no_grad():
        return unet(x, torch.tensor([500]), hidden, added_cond_kwargs=cond).sample


def test_trainer_failure_surfaces_its_error(tiny_sdxl_dir, tmp_path):
    run = write_training_run(tmp_path / "run", n=4, buckets=((64, 64),))
    (run / "download" / "images" / "101.png").write_bytes(b"not a png")
    with pytest.raises(RuntimeError, match="the trainer failed"):
        run_train(config(tiny_sdxl_dir), run, lambda _: None, env={"OMP_NUM_THREADS": "1"})
