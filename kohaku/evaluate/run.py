"""The evaluate stage: the run's prompt set sampled from the base model and each chosen LoKr
checkpoint (same prompts, same seeds), scored and compared.

Reads `<run>/tag/captions.parquet`, `<run>/buckets/manifest.parquet` (reference pictures,
when there), `<run>/train/` (config.json, checkpoints, lokr.safetensors, result.json), the
base model and the local score models the config names. Writes, in place, into
`<run>/evaluate/`:

    prompts.parquet, prompts.json        the prompt set, its version and digest
    <label>/images/<prompt_id>-s<seed>.png
    <label>/generation.json              the pictures are complete (their settings key)
    <label>/images.parquet               scores per picture
    <label>/scores.parquet               scores per prompt (mean over the seeds)
    <label>/grid.png                     prompts x seeds
    <label>/scores.json                  aggregated scores; written last
    scores.parquet, scores.json          every checkpoint's aggregated scores
    comparison.png, trend.png            prompts x checkpoints; each score across them
    manifest.json                        last

`<label>` is `base`, `step-NNNNNN` or `final`, and `step-NNNNNN-ema` or `final-ema` for the
EMA's weights of a run that kept them (`evaluate.ema`). A checkpoint whose pictures were made with
the same settings is not sampled again; only its scores are redone when the score
settings changed. `kohaku.evaluate.report.build_report` reads what the Prefect UI shows
(markdown with the pictures, tables) back from these files, without torch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from PIL import Image

from kohaku.errors import InputError
from kohaku.evaluate import report
from kohaku.evaluate.config import EVALUATE_VERSION, EvaluateConfig
from kohaku.evaluate.generate import (
    Checkpoint,
    Job,
    Sampler,
    check_base_lokr,
    list_checkpoints,
    read_train_config,
)
from kohaku.evaluate.prompts import CAPTION_COLUMNS, PromptSet, build_prompt_set
from kohaku.evaluate.report import STAGE
from kohaku.evaluate.scores import Summary
from kohaku.evaluate.scoring import Scorers, bucket_images, score_pictures
from kohaku.sdxl.model import ModelSource, check_model
from kohaku.stage import (
    MANIFEST,
    Manifest,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    config_hash,
    fingerprint,
    library_versions,
    read_manifest,
    sha256_bytes,
)
from kohaku.tag import as_strings

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (checkpoint label, pictures done, total)


@dataclass(frozen=True)
class Plan:
    """Everything checked before a weight is loaded."""

    cfg: EvaluateConfig
    run_dir: Path
    source: ModelSource
    checkpoints: list[Checkpoint]
    prompts: PromptSet
    jobs: list[Job] = field(default_factory=list)
    model_key: dict = field(default_factory=dict)  # the base model's fingerprint

    @property
    def out(self) -> Path:
        return self.run_dir / STAGE


def image_name(job: Job) -> str:
    return f"images/{job.prompt_id}-s{job.seed}.png"


def plan(cfg: EvaluateConfig, run_dir: Path) -> Plan:
    """Check the inputs (configs and headers only) and build the prompt set."""
    run_dir = Path(run_dir).resolve()
    captions = run_dir / "tag" / "captions.parquet"
    if not captions.is_file():
        raise InputError(f"{captions} does not exist: run the tag stage first")
    missing = sorted(set(CAPTION_COLUMNS) - set(pl.read_parquet_schema(captions)))
    if missing:
        raise InputError(f"{captions} lacks columns {missing}: rebuild the tag stage")
    train = read_train_config(run_dir)
    model = cfg.base_model or (train.model if train is not None else None)
    if model is None:
        raise InputError("no base model: set evaluate.base_model, or train the run first "
                         f"({run_dir / 'train' / 'config.json'} is missing)")  # fmt: skip
    source = check_model(model)  # with its base LoKr (train.model.lokr), if any
    checkpoints = list_checkpoints(run_dir, cfg.checkpoints, cfg.include_base, cfg.ema)
    check_base_lokr(source, run_dir, checkpoints)
    layout = cfg.layout or (train.layout if train is not None else None) or "epsilon"
    frame = as_strings(pl.scan_parquet(captions).select(CAPTION_COLUMNS)).collect()
    prompts = build_prompt_set(frame, layout, cfg.characters, cfg.styles,
                               cfg.quality_probes, cfg.character_references,
                               image_ids=bucket_images(run_dir)["id"].to_list())  # fmt: skip
    if prompts.frame.is_empty():
        raise InputError(f"{captions} gives no prompt (no character, artist or quality tag)")
    # `text`: the prompt without the layout's keep separator, which no text encoder sees
    jobs = [Job(pid, prompt, seed) for pid, prompt in prompts.frame.select("prompt_id", "text")
            .iter_rows() for seed in cfg.seeds]  # fmt: skip
    return Plan(cfg, run_dir, source, checkpoints, prompts, jobs, model_key(source))


def model_key(source: ModelSource) -> dict:
    """What the base's pictures depend on: its file, and its base LoKr's hash and weight
    (absent without one, so that earlier keys hold)."""
    key = fingerprint(source.path).model_dump()
    if source.lokr is not None:
        key["lokr"] = {"sha256": source.lokr.sha256, "weight": source.lokr.weight}
    return key


def run_evaluate(cfg: EvaluateConfig, run_dir: Path, progress: Progress | None = None) -> Manifest:
    """Sample and score every chosen checkpoint; returns the stage manifest."""
    start = time.perf_counter()
    p = plan(cfg, run_dir)
    p.out.mkdir(parents=True, exist_ok=True)
    (p.out / MANIFEST).unlink(missing_ok=True)  # the stage is not done while it runs
    write_prompt_set(p.prompts, p.out)
    scorers = Scorers.load(cfg, p.run_dir, p.prompts)
    sampler = Sampler(p.source, cfg, p.run_dir, p.checkpoints)
    for checkpoint in p.checkpoints:
        evaluate_checkpoint(p, checkpoint, sampler, scorers, progress)
    summaries = comparable(p.out, compare_key(p, sampler, scorers))
    write_overview(p, summaries)
    return write_stage_manifest(p, summaries, time.perf_counter() - start)


def comparable(out: Path, key: str) -> list[Summary]:
    """The scored checkpoints under `out` with this compare key, base first, then by step."""
    found = [_read_json(path) for path in sorted(out.glob("*/scores.json"))]
    return report.ordered([Summary.from_dict(d) for d in found if d.get("compare_key") == key])


def write_prompt_set(prompts: PromptSet, out: Path) -> None:
    prompts.frame.write_parquet(out / "prompts.parquet")
    kinds = prompts.frame["kind"].value_counts().sort("kind").rows()
    meta = {"version": prompts.version, "digest": prompts.digest, "layout": prompts.layout,
            "prompts": prompts.frame.height, "kinds": dict(kinds)}  # fmt: skip
    atomic_write_text(out / "prompts.json", json.dumps(meta, indent=1))


# ---------------------------------------------------------------------------- one checkpoint


def settings(p: Plan, sampler: Sampler, checkpoint: Checkpoint | None = None) -> dict:
    """What pictures depend on besides the LoKr tensors; the base's not on the LoKr's
    weight or how it is applied (None: every setting)."""
    cfg = p.cfg
    parts = {
        "version": EVALUATE_VERSION, "model": p.model_key,
        "prompts": p.prompts.digest, "seeds": cfg.seeds, "device": sampler.device.type,
        "dtype": str(sampler.dtype), "sampling": cfg.model_dump(
            include={"cfg_scale", "steps", "width", "height", "negative_prompt", "max_tokens"})
        | sampler.schedule_settings(),
    }  # fmt: skip
    if checkpoint is None or checkpoint.path is not None:
        parts |= {"lokr_weight": cfg.lokr_weight, "apply": cfg.apply}
    return parts


def generation_key(p: Plan, sampler: Sampler, checkpoint: Checkpoint) -> str:
    """A changed setting or LoKr file means sampling again."""
    weights = None
    if checkpoint.path is not None:  # relative: a copied or moved run dir keeps its pictures
        st = checkpoint.path.stat()
        weights = [str(checkpoint.path.relative_to(p.run_dir)), st.st_size, st.st_mtime_ns]
    return _key(settings(p, sampler, checkpoint), weights)


def compare_key(p: Plan, sampler: Sampler, scorers: Scorers) -> str:
    """Checkpoints scored under the same key are comparable (same prompts, seeds, sampling
    and scores): the overview shows all of them, from this call or earlier ones."""
    return _key(settings(p, sampler), scorers.key, p.cfg.grid_prompts, p.cfg.grid_cell)


def evaluate_checkpoint(p: Plan, checkpoint: Checkpoint, sampler: Sampler, scorers: Scorers,
                        progress: Progress | None = None) -> Summary:  # fmt: skip
    folder = p.out / checkpoint.label
    gen_key = generation_key(p, sampler, checkpoint)
    if _read_json(folder / "generation.json").get("key") != gen_key:
        generate(p, checkpoint, sampler, gen_key, progress)
    else:
        log.info("evaluate %s: pictures up to date", checkpoint.label)
    keys = {"score_key": _key(gen_key, scorers.key, p.cfg.grid_prompts, p.cfg.grid_cell),
            "compare_key": compare_key(p, sampler, scorers)}  # fmt: skip
    done = _read_json(folder / "scores.json")
    if all(done.get(k) == v for k, v in keys.items()):
        return Summary.from_dict(done)
    return score(p, checkpoint, scorers, keys)


def generate(p: Plan, checkpoint: Checkpoint, sampler: Sampler, key: str,
             progress: Progress | None) -> None:  # fmt: skip
    """Sample the checkpoint's pictures into a partial folder, then swap it into place."""
    t0, folder = time.perf_counter(), p.out / checkpoint.label
    with atomic_path(folder) as tmp:
        (tmp / "images").mkdir(parents=True)
        sampler.use(checkpoint)
        for i, (job, picture) in enumerate(zip(p.jobs, sampler.sample(p.jobs), strict=True)):
            picture.save(tmp / image_name(job))
            if progress is not None:
                progress(checkpoint.label, i + 1, len(p.jobs))
        seconds = round(time.perf_counter() - t0, 3)
        meta = {"key": key, "label": checkpoint.label, "step": checkpoint.step,
                "checkpoint": str(checkpoint.path) if checkpoint.path else None,
                "pictures": len(p.jobs), "seconds": seconds}  # fmt: skip
        atomic_write_text(tmp / "generation.json", json.dumps(meta, indent=1))
    log.info("evaluate %s: %d pictures in %.1f s", checkpoint.label, len(p.jobs), seconds)


def score(p: Plan, checkpoint: Checkpoint, scorers: Scorers, keys: dict) -> Summary:
    """Score the pictures; per-picture and per-prompt parquet, the grid, scores.json last."""
    folder = p.out / checkpoint.label
    pictures = pictures_frame(p)
    per_image, metrics = score_pictures(pictures, folder, scorers)
    per_image.write_parquet(folder / "images.parquet")
    per_prompt(per_image).write_parquet(folder / "scores.parquet")
    atomic_write_bytes(folder / "grid.png", checkpoint_grid(p, folder))
    summary = Summary(checkpoint.label, checkpoint.step, tuple(metrics))
    extra = {"prompt_set": p.prompts.digest,
             "lokr_weight": p.cfg.lokr_weight if checkpoint.path else None}  # fmt: skip
    data = {**summary.as_dict(), **keys, **extra}
    atomic_write_text(folder / "scores.json", json.dumps(data, indent=1))
    return summary


def pictures_frame(p: Plan) -> pl.DataFrame:
    """One row per picture: prompt_id, kind, tag, text, references, seed, image."""
    seeds = pl.DataFrame({"seed": p.cfg.seeds}, schema={"seed": pl.Int64})
    frame = p.prompts.frame.select("prompt_id", "kind", "tag", "text", "references")
    frame = frame.join(seeds, how="cross")
    return frame.with_columns(image=pl.format("images/{}-s{}.png", "prompt_id", "seed"))


def per_prompt(per_image: pl.DataFrame) -> pl.DataFrame:
    scores = [c for c in per_image.columns if c in report.METRICS]
    return per_image.group_by("prompt_id", "kind", "tag", maintain_order=True).agg(
        pl.col("seed"), pl.col("image"), *[pl.col(c).mean() for c in scores]
    )


def checkpoint_grid(p: Plan, folder: Path) -> bytes:
    """The first `grid_prompts` prompts (rows) with every seed (columns)."""
    rows = p.prompts.frame.head(p.cfg.grid_prompts).select("prompt_id", "tag").rows()
    pictures = [[_open(folder / f"images/{pid}-s{seed}.png") for seed in p.cfg.seeds]
                for pid, _ in rows]  # fmt: skip
    columns = [f"seed {s}" for s in p.cfg.seeds]
    return report.grid_png(pictures, columns, [t for _, t in rows], p.cfg.grid_cell)


# ---------------------------------------------------------------------------- the run


def write_overview(p: Plan, summaries: list[Summary]) -> None:
    """Every checkpoint's scores side by side, the comparison grid and the trend chart."""
    rows = [{"label": s.label, "step": s.step, **{k: v for k, v in m.as_dict().items()
             if k in ("name", "status", "value", "reason", "n")}}
            for s in summaries for m in s.metrics]  # fmt: skip
    schema = {"label": pl.String, "step": pl.Int64, "name": pl.String, "status": pl.String,
              "value": pl.Float64, "reason": pl.String, "n": pl.Int64}  # fmt: skip
    pl.DataFrame(rows, schema=schema).write_parquet(p.out / "scores.parquet")
    atomic_write_text(p.out / "scores.json",
                      json.dumps([s.as_dict() for s in summaries], indent=1))  # fmt: skip
    atomic_write_bytes(p.out / "trend.png", report.trend_png(summaries))
    atomic_write_bytes(p.out / "comparison.png", comparison_grid(p, summaries))


def comparison_grid(p: Plan, summaries: list[Summary]) -> bytes:
    """The first prompts (rows, first seed) of every checkpoint (columns)."""
    seed = p.cfg.seeds[0]
    rows = p.prompts.frame.head(p.cfg.grid_prompts).select("prompt_id", "tag").rows()
    pictures = [[_open(p.out / s.label / f"images/{pid}-s{seed}.png") for s in summaries]
                for pid, _ in rows]  # fmt: skip
    return report.grid_png(pictures, [s.label for s in summaries], [t for _, t in rows],
                           p.cfg.grid_cell)  # fmt: skip


def write_stage_manifest(p: Plan, summaries: list[Summary], seconds: float) -> Manifest:
    tag = read_manifest(p.run_dir / "tag")
    train = read_manifest(p.run_dir / "train")
    inputs = {"tag": tag.created_at if tag else None, "train": train.created_at if train else None,
              "model": str(p.source.path), "prompt_set": p.prompts.digest}  # fmt: skip
    outputs = {"prompts": "prompts.parquet", "scores": "scores.parquet",
               "summary": "scores.json", "trend": "trend.png", "comparison": "comparison.png",
               **{f"checkpoint:{s.label}": s.label for s in summaries}}  # fmt: skip
    counts = {"checkpoints": len(summaries), "prompts": p.prompts.frame.height,
              "pictures_per_checkpoint": len(p.jobs), "seeds": len(p.cfg.seeds)}  # fmt: skip
    manifest = Manifest(
        stage=STAGE, stage_version=EVALUATE_VERSION, config_hash=config_hash(p.cfg),
        inputs=inputs, outputs=outputs, counts=counts, timings={"total": round(seconds, 3)},
        versions=library_versions("torch", "diffusers", "transformers", "lycoris-lora",
                                  "onnxruntime"),
        created_at=time.time(),
    )  # fmt: skip
    atomic_write_text(p.out / MANIFEST, manifest.model_dump_json(indent=2))
    return manifest


# ---------------------------------------------------------------------------- helpers


def _key(*parts: object) -> str:
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())[:16]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _open(path: Path) -> Image.Image | None:
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return im.convert("RGB")
