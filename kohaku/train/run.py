"""The train stage: check every input, then run the trainer in child processes.

Reads `<run>/buckets/manifest.json` (+ its parquet), `<run>/tag/manifest.json` (+
captions), `<run>/sample/posts.parquet` (each image's repeats per epoch), the base model's
configs (not its weights), the base LoKr's header and hash
(`train.model.lokr`) and the LoKr preset; every check runs before a tensor is allocated.
Writes `<run>/train/config.json` and, through the trainer, `checkpoints/`, `metrics.jsonl`,
`lokr.safetensors` (recording the base LoKr it was trained on top of), `lokr-ema.safetensors`
(`train.ema`) and `validation.json` (`train.validation`'s held-out posts); then, last,
`<run>/train/manifest.json` (the base LoKr's path, sha256 and weight among its inputs; the
images, showings per epoch with repeats, batches and left-out images per epoch, the
held-out posts' count and digest and the last validation loss among its counts).
Like the download stage it works in place: a stopped or killed run resumes from its newest
checkpoint when started again; a train folder left by another config or other data
(`resume.json` differs) is moved to `train.superseded/` and the run starts over, so a
changed field never resumes someone else's checkpoints.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kohaku.errors import ConfigError, InputError
from kohaku.sdxl import lokr
from kohaku.sdxl.embeddings import locate_embeddings
from kohaku.sdxl.model import ModelSource, check_model
from kohaku.sdxl.model import meta_models as model_meta_models
from kohaku.sdxl.schedule import schedule_source
from kohaku.stage import MANIFEST, Manifest, atomic_write_text, config_hash, library_versions
from kohaku.stage import read_manifest as read_stage
from kohaku.train import validation as val
from kohaku.train.config import TRAIN_VERSION, LoaderConfig, TrainConfig
from kohaku.train.data import check_texts, load_items, posts_file
from kohaku.train.launch import command, launch
from kohaku.train.loop import CAPTION_COUNTS, STOPPED
from kohaku.train.order import BucketBatches

STAGE = "train"


class TrainingStopped(RuntimeError):
    """The trainer stopped on SIGTERM after writing a checkpoint: run the stage again."""


@dataclass(frozen=True)
class CheckedInputs:
    """What `check_inputs` found: the model to load (with its base LoKr) and the batch
    order of the run's images (their repeats included)."""

    source: ModelSource
    batches: BucketBatches


def check_inputs(cfg: TrainConfig, run_dir: Path) -> ModelSource:
    """Everything that can be checked without loading weights; the model to load."""
    return checked_inputs(cfg, run_dir).source


def checked_inputs(cfg: TrainConfig, run_dir: Path) -> CheckedInputs:
    """`check_inputs`, keeping the batch order it built."""
    run_dir = Path(run_dir)
    for stage, what in (("buckets", "the images"), ("tag", "the captions")):
        if read_stage(run_dir / stage) is None:
            raise InputError(f"{run_dir / stage} is not finished: build {what} first")
    source = check_model(cfg.model)  # with the base LoKr merged in, when there is one
    try:
        source = schedule_source(source, cfg.loss)  # prediction and zero terminal SNR agree
    except ConfigError as e:
        if source.lokr is None:
            raise
        raise ConfigError(f"with model.lokr {source.lokr.path} merged in, {e}") from None
    if cfg.model.restore_embeddings_from is not None:
        locate_embeddings(cfg.model.restore_embeddings_from, cfg.model.allow_pickle)
    lokr.check_preset(lokr.load_preset(cfg.adapter.preset), meta_models(source, cfg))
    items = load_items(run_dir / "buckets" / "manifest.parquet",
                       run_dir / "tag" / "captions.parquet", cfg.layout,
                       posts_file(run_dir))  # fmt: skip
    check_texts(items, cfg.captions, run_dir / "tag" / "captions.parquet")
    items = val.split(items, cfg.validation, cfg.batch_size)[0]  # held-out posts left out
    try:
        batches = BucketBatches(items, cfg.batch_size, cfg.dist.world_size, 0, cfg.seed)
    except ValueError as exc:
        raise ConfigError(f"train: {exc}") from None
    return CheckedInputs(source, batches)


def meta_models(source: ModelSource, cfg: TrainConfig) -> dict[str, torch.nn.Module]:
    """The models the preset targets, built from their configs on the meta device."""
    text = ("text_encoder", "text_encoder_2") if cfg.adapter.train_text_encoders else ()
    return model_meta_models(source, ("unet", *text))


def run_train(cfg: TrainConfig, run_dir: Path, on_line: Callable[[str], None] = print,
              env: dict | None = None) -> Manifest:  # fmt: skip
    """Train (or resume) to the end; returns the stage manifest."""
    run_dir, start = Path(run_dir).resolve(), time.perf_counter()
    checked = checked_inputs(cfg, run_dir)
    out = run_dir / STAGE
    _start_over_if_changed(cfg, run_dir, checked.source, checked.batches)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", cfg.model_dump_json(indent=1))
    done = launch(command(cfg, out / "config.json", run_dir), on_line, env)
    if done.returncode == STOPPED:
        raise TrainingStopped(f"training stopped at step {(done.last_metrics or {}).get('step')}"
                              "; run the stage again to resume")  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the trainer failed (exit {done.returncode}):\n"
                           + "\n".join(done.tail[-20:]))  # fmt: skip
    merged = export(cfg, run_dir)
    return _write_manifest(cfg, run_dir, done.last_metrics or {}, merged,
                           time.perf_counter() - start, checked)  # fmt: skip


def _start_over_if_changed(cfg: TrainConfig, run_dir: Path, source: ModelSource | None = None,
                           batches: BucketBatches | None = None) -> None:  # fmt: skip
    """Resume only what this config on these buckets and captions (and this base LoKr's
    content, when the checked `source` has one; these repeats, when some image has more
    than one) started."""
    out, stamp = run_dir / STAGE, run_dir / STAGE / "resume.json"
    inputs = {name: (m.config_hash, m.created_at) if (m := read_stage(run_dir / name)) else None
              for name in ("buckets", "tag")}  # fmt: skip
    if source is not None and source.lokr is not None:  # absent: earlier runs keep their keys
        inputs["base_lokr"] = source.lokr.sha256
    if batches is not None and batches.repeated:  # absent without repeats, as before them
        inputs["order"] = batches.fingerprint()
    same = cfg.model_copy(update={"loader": LoaderConfig()})  # workers change no result
    key = json.dumps({"config": config_hash(same), "inputs": inputs})
    if out.is_dir() and any(out.iterdir()) and (not stamp.is_file() or stamp.read_text() != key):
        old = run_dir / f"{STAGE}.superseded"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, key)


def export(cfg: TrainConfig, run_dir: Path) -> dict[str, str]:
    """The merged models the config asks for: `train/merged/` and `train/merged.safetensors`
    (base + the base LoKr, if any, + the trained LoKr)."""
    from kohaku.train.export import export_merged

    source = check_model(cfg.model)
    names = {"diffusers": "merged", "single_file": "merged.safetensors"}
    for kind in cfg.export.formats:
        export_merged(source, run_dir / STAGE / "lokr.safetensors", run_dir / STAGE / names[kind],
                      kind, cfg.export.storage)  # fmt: skip
    return {f"merged_{kind}": names[kind] for kind in cfg.export.formats}


def caption_counts(result: dict) -> dict:
    """The trainer's caption figures: token counts of the full captions (the model's own
    tokenizer), how many drawn captions the `max_tokens` budget cut, how many were of the
    text, of tags and text, and how many fell back to tags (text drawn, the post has none)."""
    keys = CAPTION_COUNTS
    return {**result.get("caption_tokens", {}), **{k: result[k] for k in keys if k in result}}


def added_outputs(result: dict) -> dict[str, str]:
    """The EMA's LoKr file and the held-out posts' record, when the run has them."""
    out = {"lokr_ema": result.get("lokr_ema")}
    out["validation"] = result["validation"]["file"] if "validation" in result else None
    return {k: v for k, v in out.items() if v is not None}


def validation_counts(result: dict) -> dict:
    """How many posts were held out, the sha256 of their ids, and the last validation loss."""
    if "validation" not in result:
        return {}
    held = result["validation"]
    return {"validation_posts": held["posts"], "validation_sha256": held["sha256"],
            "final_val_loss": result.get("val_loss")}  # fmt: skip


def data_counts(batches: BucketBatches) -> dict:
    """The manifest's figures of the data: images, showings per epoch (the repeats of the
    sample's ranges and subsets summed), global micro-batches and images left out (the
    incomplete batches of each bucket) per epoch."""
    return {"images": batches.images, "images_per_epoch": batches.images_per_epoch,
            "batches_per_epoch": batches.batches_per_epoch,
            "dropped_per_epoch": batches.dropped_per_epoch}  # fmt: skip


def _write_manifest(cfg: TrainConfig, run_dir: Path, metrics: dict, merged: dict[str, str],
                    seconds: float, checked: CheckedInputs) -> Manifest:  # fmt: skip
    result = json.loads((run_dir / STAGE / "result.json").read_text())
    buckets = read_stage(run_dir / "buckets")
    lokr = checked.source.lokr
    base_lokr = {} if lokr is None else {"base_lokr": {
        "path": str(lokr.path), "sha256": lokr.sha256, "weight": lokr.weight}}  # fmt: skip
    manifest = Manifest(
        stage=STAGE, stage_version=TRAIN_VERSION, config_hash=config_hash(cfg),
        inputs={"buckets": {"config_hash": buckets.config_hash, "created_at": buckets.created_at},
                "model": str(cfg.model.path), **base_lokr},
        outputs={"lokr": result["lokr"], "metrics": "metrics.jsonl", **merged,
                 **added_outputs(result)},
        counts={"steps": result["step"], "final_loss": metrics.get("loss"),
                "images_per_s": metrics.get("images_per_s"), **data_counts(checked.batches),
                **caption_counts(result), **validation_counts(result)},
        timings={"total": round(seconds, 3)},
        versions=library_versions("torch", "diffusers", "transformers", "lycoris-lora",
                                  "bitsandbytes", "safetensors"),
        created_at=time.time(),
    )  # fmt: skip
    atomic_write_text(run_dir / STAGE / MANIFEST, manifest.model_dump_json(indent=2))
    return manifest
