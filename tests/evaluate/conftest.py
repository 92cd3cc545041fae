"""Fixtures of the evaluate tests: a tiny SDXL, a tiny CLIP and a tiny TorchScript feature
extractor built in code, and a run dir as the tag, buckets and train stages leave it (two
step checkpoints under training names, the final LoKr under kohya names)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from kohaku.stage import build_stage, write_manifest
from tests.torch_fixtures import one_torch_thread, tiny_sdxl_dir  # noqa: F401

STRINGS = pl.List(pl.String)
# (id, count, character, copyright, artist, general, quality, rating)
POSTS = [
    (1, ["1girl"], ["hatsune miku"], ["vocaloid"], ["artist a"], ["long hair", "smile"],
     "masterpiece", ["safe"]),
    (2, ["1girl"], ["hatsune miku"], ["vocaloid"], ["artist a"], ["long hair"], "best quality",
     ["safe"]),
    (3, ["1girl"], ["hatsune miku"], ["vocaloid", "project diva"], ["artist b"],
     ["long hair", "solo"], None, ["safe"]),
    (4, ["2girls"], ["hatsune miku", "kagamine rin"], ["vocaloid"], [], ["smile"],
     "worst quality", ["nsfw"]),
    (5, ["1girl"], ["kagamine rin"], ["vocaloid"], ["artist a"], ["short hair", "solo"],
     "best quality", ["safe"]),
    (6, ["1girl"], ["kagamine rin"], ["vocaloid"], [], ["short hair"], None, ["safe"]),
    (7, ["1girl"], ["hakurei reimu"], ["touhou"], ["artist b"], ["bow", "solo"], None, ["safe"]),
    (8, ["1girl"], ["hakurei reimu"], ["touhou"], [], ["bow"], None, ["nsfw"]),
    (9, [], [], [], ["artist a"], ["scenery"], "masterpiece", ["safe"]),
    (10, [], [], [], [], ["scenery"], None, ["safe"]),
]  # fmt: skip


def captions_frame(posts=POSTS) -> pl.DataFrame:
    cols = ["id", "count", "character", "copyright", "artist", "general", "quality", "rating_tags"]
    frame = pl.DataFrame(posts, schema=cols, orient="row")
    return frame.with_columns(
        caption=pl.lit("?"), meta=pl.lit([], STRINGS), date=pl.lit(None, pl.String),
        **{c: pl.col(c).cast(STRINGS) for c in ("count", "character", "copyright", "artist",
                                                "general", "rating_tags")},
    )  # fmt: skip


class TinyExtractor(torch.nn.Module):
    """A random conv net standing in for the FID Inception (same call: [0, 255] input,
    `return_features`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        h = torch.relu(self.conv(x / 127.5 - 1)).mean(dim=(2, 3))
        return h if return_features else self.fc(h)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny CLIP (CLIPModel, byte-level BPE tokenizer, image processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from kohaku.sdxl.tiny import bpe_vocab, write_tokenizer

    vocab = bpe_vocab()
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"]}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 32, "patch_size": 8}  # fmt: skip
    out = tmp_path_factory.mktemp("tiny-clip") / "clip"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
                  ).save_pretrained(out)  # fmt: skip
    write_tokenizer(out, "<|endoftext|>")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                       ).save_pretrained(out)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_extractor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinyExtractor as a TorchScript file (the format of the FID Inceptions)."""
    path = tmp_path_factory.mktemp("extractor") / "tiny.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.jit.script(TinyExtractor().eval()).save(str(path))
    return path


def _stage(run: Path, stage: str, name: str, frame: pl.DataFrame) -> None:
    with build_stage(run, stage) as build:
        frame.write_parquet(build.dir / name)
        write_manifest(build, stage_version="1", config_hash="handmade", inputs={},
                       outputs={stage: name}, counts={}, versions={})  # fmt: skip


def write_eval_run(run: Path, model: Path) -> Path:
    """tag/ and buckets/ (a random 64x64 picture per post), train/config.json, checkpoints
    step-000001 and step-000002 (training names) and the final lokr.safetensors (kohya
    names, the weights of step 2; result.json says step 3)."""
    rng = np.random.default_rng(0)
    rows = []
    for pid, *_ in POSTS:
        path = Path("download/images") / f"{pid}.png"
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(run / path)
        rows.append((pid, str(path)))
    _stage(run, "tag", "captions.parquet", captions_frame())
    _stage(run, "buckets", "manifest.parquet", pl.DataFrame(rows, schema=["id", "path"],
                                                            orient="row"))  # fmt: skip
    write_train(run, model)
    return run


def write_train(run: Path, model: Path) -> None:
    from safetensors.torch import save_file

    from kohaku.sdxl import lokr
    from kohaku.sdxl.model import check_model_path, load_sdxl
    from kohaku.train.config import AdapterConfig, ModelConfig, OptimConfig, TrainConfig

    train = run / "train"
    train.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(model=ModelConfig(path=model), adapter=AdapterConfig(preset="attn-only"),
                      optim=OptimConfig(kind="adamw"), layout="epsilon")  # fmt: skip
    (train / "config.json").write_text(cfg.model_dump_json())
    parts = load_sdxl(check_model_path(model))
    models = {c: getattr(parts, c) for c in ("unet", "text_encoder", "text_encoder_2")}
    adapters = lokr.attach(lokr.load_preset("attn-only"), models, seed=0)
    gen = torch.Generator().manual_seed(0)
    for step in (1, 2):
        with torch.no_grad():
            for net in adapters.networks.values():
                for name, p in net.named_parameters():
                    if "lokr_w" in name:
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        state = {f"{c}.{k}": v.contiguous() for c, net in adapters.networks.items()
                 for k, v in net.state_dict().items()}  # fmt: skip
        out = train / "checkpoints" / f"step-{step:06d}"
        out.mkdir(parents=True)
        save_file(state, str(out / "adapter.safetensors"))
        (out / "meta.json").write_text(json.dumps({"position": {"step": step}}))
    lokr.save(adapters, train / "lokr.safetensors", torch.float32)
    (train / "result.json").write_text(json.dumps({"status": "done", "step": 3}))


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory: pytest.TempPathFactory, tiny_sdxl_dir: Path) -> Path:  # noqa: F811
    """The run dir before evaluation; read-only for tests (copy it to change it)."""
    return write_eval_run(tmp_path_factory.mktemp("eval-run") / "run", tiny_sdxl_dir)


def tiny_config(**over):
    from kohaku.evaluate.config import EvaluateConfig

    base = {"characters": 2, "styles": 1, "character_references": 2, "seeds": [0, 1],
            "steps": 2, "width": 64, "height": 64, "batch_size": 3, "cfg_scale": 5.0,
            "reference_images": 8, "kid_subsets": 5, "kid_subset_size": 4, "grid_cell": 32,
            # fp32: hooked and merged pictures are compared pixel for pixel (auto is bf16 on CPU)
            "device": "cpu", "precision": "fp32"}  # fmt: skip
    return EvaluateConfig(**(base | over))


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, eval_run: Path, tiny_clip_dir: Path, tiny_extractor: Path):
    """The run after `run_evaluate` on base + every checkpoint (CLIP and FID/KID models
    given, CCIP not); returns (run dir, config, manifest). Read-only for tests."""
    import shutil

    from kohaku.evaluate.run import run_evaluate

    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(eval_run, run)
    cfg = tiny_config(checkpoints="all", include_base=True, clip_model=tiny_clip_dir,
                      inception=tiny_extractor)  # fmt: skip
    calls: list[tuple[str, int, int]] = []
    manifest = run_evaluate(cfg, run, progress=lambda *a: calls.append(a))
    return run, cfg, manifest, calls


def write_tiny_ccip(out: Path, threshold: float = 0.5) -> Path:
    """A CCIP folder of tiny ONNX graphs in deepghs/ccip_onnx's layout: the feature is each
    channel's mean of the prepared picture, the difference the Euclidean distance."""
    from onnx import TensorProto, checker, helper, save

    def graph(name, nodes, shape_in, shape_out, inits=()):
        g = helper.make_graph(
            nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape_in)],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape_out)],
            initializer=list(inits),
        )  # fmt: skip
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        checker.check_model(model)
        return model

    def ints(name, values):
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    out.mkdir(parents=True, exist_ok=True)
    feat = graph("feat", [helper.make_node("ReduceMean", ["input"], ["output"], axes=[2, 3],
                                           keepdims=0)], ["N", 3, "H", "W"], ["N", 3])  # fmt: skip
    metric = graph("metrics", [
        helper.make_node("Unsqueeze", ["input", "ax1"], ["a"]),
        helper.make_node("Unsqueeze", ["input", "ax0"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "ax2"], ["s"], keepdims=0),
        helper.make_node("Sqrt", ["s"], ["output"]),
    ], ["N", "D"], ["N", "N"], [ints("ax0", [0]), ints("ax1", [1]), ints("ax2", [2])])  # fmt: skip
    save(feat, str(out / "model_feat.onnx"))
    save(metric, str(out / "model_metrics.onnx"))
    (out / "metrics.json").write_text(json.dumps({"threshold": threshold}))
    return out


@pytest.fixture(scope="session")
def tiny_ccip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_ccip(tmp_path_factory.mktemp("ccip") / "ccip-tiny")
