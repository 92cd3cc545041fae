"""The bundled demo: a small synthetic danbooru2023 database and a run config for it, and
the closing summary of what the run made.

Writes `<dir>/metadata/danbooru.db` (once; md5s stamped from the demo pictures that
`kohaku.demo.images.ImageServer` serves), `<dir>/metadata/captions.jsonl` (once: template
natural-language captions for two posts in three, from their tags), `<dir>/model/` (a
tiny SDXL built in code, once; the libraries' lines in `<dir>/run/logs/demo.log`) and
`<dir>/demo.toml`. The image server's URL is only known once it runs, so it is passed
as an override (`DEMO_URL_KEY`). `stage_summary` reads the stage manifests of a run dir.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path

from kohaku.demo.images import stamp_md5s
from kohaku.demo.synth import generate_danbooru_db
from kohaku.logs import library_logs
from kohaku.stage import atomic_path, read_manifest

DEMO_URL_KEY = "download.url_template"

# the demo's download section; the tests' served config shares it
DEMO_DOWNLOAD = """# images from the local demo server (download.url_template is set at its start);
# small buckets (about 128x128) for the demo's tiny model
[download]
threads = 8

[download.fetch]
allowed_hosts = ["127.0.0.1"]
per_host_concurrency = 8
per_host_rate = 1000.0

[download.buckets]
area = 16384
min_side = 64
max_side = 256
step = 32
"""

DEMO_TOML = (
    """# The bundled demo: a synthetic danbooru2023 database, epsilon-style captions mixed
# with natural-language ones (issue 14: as Kohaku XL Zeta's tags and Florence-2 captions).
preset = "epsilon"
run_dir = "run"

[sample]
source = "metadata/danbooru.db"
seed = 20240101
filter_timing = "before_sampling"
on_short_range = "take_all"

[[sample.ranges]]
start = 0
end = {split}
count = {first}

[[sample.ranges]]
start = {split}
count = "all"

[tag]
# template sentences from the tags for two posts in three (kohaku/demo/run.py); the others have
# no text and train on their tags (the tag manifest's texts.without_text)
text_captions = "metadata/captions.jsonl"

[tag.quality]
min_age_days = 30

"""
    + DEMO_DOWNLOAD
    + """
# LoKr training of the demo's tiny SDXL (random weights, built in code into model/),
# the recipe's optimizer and objective at toy scale
[train]
batch_size = 4
max_steps = 40
checkpoint_every = 20
log_every = 5

[train.model]
path = "model"

[train.optim]
kind = "lion8bit"
lr_unet = 1e-4
lr_text = 2e-5
warmup_steps = 5

[train.loss]
noise_offset = 0.0357

[train.captions]
tag_dropout = 0.15
# per step: the tags (half the steps), the text in place of the general tags, or both;
# a post without text falls back to its tags (result.json's captions_text_fallback)
p_tags = 0.5
p_text = 0.25
p_both = 0.25
max_tokens = 300

# sample grids of the base, each checkpoint and the final LoKr (no score models are
# bundled, so CLIP / CCIP / FID show as skipped)
[evaluate]
characters = 4
styles = 2
seeds = [0, 1]
steps = 8
width = 128
height = 128
checkpoints = "all"
include_base = true
max_tokens = 300
# the toy model is tiny: fp32 on a CPU (most CPUs emulate bf16, `auto`'s CPU choice for
# the memory of full-size models; 3-4x slower here)
precision = "fp32"
"""
)


def prepare_demo(root: Path, posts: int = 3000, seed: int = 0) -> Path:
    """Generate the demo database if missing and write the demo config; returns its path."""
    db = root / "metadata" / "danbooru.db"
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        partial = db.with_name(db.name + ".partial")
        partial.unlink(missing_ok=True)
        generate_danbooru_db(partial, posts, seed=seed)
        stamp_md5s(partial)
        partial.replace(db)
    texts = root / "metadata" / "captions.jsonl"
    if not texts.exists():
        write_demo_texts(db, texts)
    model = root / "model"
    if not (model / "model_index.json").is_file():
        with library_logs(root / "run" / "logs" / "demo.log"):
            from kohaku.sdxl.tiny import write_tiny_sdxl

            write_tiny_sdxl(model, seed=seed)
    max_id = round(posts * 1.1)
    config = root / "demo.toml"
    config.write_text(DEMO_TOML.format(split=max_id // 2, first=posts // 4))
    return config


# per stage: what it made (a template over its manifest's counts) and its main output
MADE = {
    "sample": ("{posts} posts", "posts.parquet"),
    "tag": ("{captions} captions, {mean_tags:.1f} tags each", "captions.parquet"),
    "download": ("{ok} of {posts} images, {failed} failed ({bytes:,} bytes)", "images/"),
    "buckets": ("{images} images in {buckets} buckets", "manifest.parquet"),
    "train": ("{steps} steps, final loss {final_loss:.3f}", "lokr.safetensors"),
    "evaluate": (
        "{checkpoints} checkpoints x {pictures_per_checkpoint} pictures, a grid each",
        "comparison.png",
    ),
}


def stage_summary(run_dir: Path) -> list[str]:
    """A table, one line per finished stage of `run_dir`: its seconds, what it made and
    where (paths relative to the run dir)."""
    rows = [("stage", "seconds", "made", "where")]
    for stage, (template, output) in MADE.items():
        manifest = read_manifest(Path(run_dir) / stage)
        if manifest is None:
            continue
        try:
            made = template.format_map(manifest.counts)
        except (KeyError, TypeError, ValueError):  # a manifest of another stage version
            made = ", ".join(f"{k}={v}" for k, v in manifest.counts.items())[:80]
        seconds = manifest.timings.get("total")
        seconds = "-" if seconds is None else f"{seconds:.1f}"
        rows.append((stage, seconds, made, f"{stage}/{output}"))
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows]


# ---------------------------------------------------------------- natural-language captions

COUNT_WORDS = {"1girl": "a girl", "2girls": "two girls", "3girls": "three girls",
               "multiple_girls": "several girls", "1boy": "a boy", "2boys": "two boys",
               "multiple_boys": "several boys", "1other": "a figure",
               "no_humans": "a scene without people"}  # fmt: skip


def write_demo_texts(db: Path, out: Path, every: int = 3) -> int:
    """Write `out` (JSON lines: id, text) for the posts of `db` whose id is not a multiple of
    `every`: sentences built from their tags, so a demo run has posts with a text and posts
    that fall back to tags. Returns the number of lines."""
    names = defaultdict(lambda: defaultdict(list))  # post id -> tag type -> names
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT r.post_id, t.type, t.name FROM posttagrelation r "
                           "JOIN tag t ON t.id = r.tag_id ORDER BY r.post_id, r.id")  # fmt: skip
        for post, kind, name in rows:
            if post % every:
                names[post][kind].append(name.replace("_", " ") if len(name) > 3 else name)
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        for post in sorted(names):
            f.write(json.dumps({"id": post, "text": describe(names[post])}) + "\n")
    return len(names)


def describe(tags: dict[int, list[str]]) -> str:
    """Two or three sentences from a post's tags by type (0 general, 1 artist, 2 character,
    3 copyright): who, from what, doing or wearing what, drawn by whom."""
    general = tags.get(0, [])
    count = next((COUNT_WORDS[t.replace(" ", "_")] for t in general
                  if t.replace(" ", "_") in COUNT_WORDS), "a character")  # fmt: skip
    rest = [t for t in general if t.replace(" ", "_") not in COUNT_WORDS][:4]
    who = " and ".join(tags.get(2, [])[:2]) or count
    text = f"An anime picture of {who}" + (f" from {tags[3][0]}" if tags.get(3) else "") + "."
    if rest:
        listed = ", ".join(rest[:-1]) + (" and " if len(rest) > 1 else "") + rest[-1]
        text += f" The picture shows {listed}."
    if tags.get(1):
        text += f" It was drawn by {tags[1][0]}."
    return text
