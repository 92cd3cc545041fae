"""The bundled demo: a small synthetic danbooru2023 database and a run config for it.

Writes `<dir>/metadata/danbooru.db` (once; md5s stamped from the demo pictures that
`kohaku.demo_images.ImageServer` serves), `<dir>/model/` (a tiny SDXL built in code,
once) and `<dir>/demo.toml`. The image server's URL is
only known once it runs, so it is passed as an override (`DEMO_URL_KEY`).
"""

from __future__ import annotations

from pathlib import Path

from kohaku.demo_images import stamp_md5s
from kohaku.synth import generate_danbooru_db

DEMO_URL_KEY = "download.url_template"

DEMO_TOML = """# The bundled demo: a synthetic danbooru2023 database, epsilon-style captions.
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

[tag.quality]
min_age_days = 30

# images from the local demo server (download.url_template is set when it starts);
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
"""


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
    model = root / "model"
    if not (model / "model_index.json").is_file():
        from kohaku.train.tiny import write_tiny_sdxl

        write_tiny_sdxl(model, seed=seed)
    max_id = round(posts * 1.1)
    config = root / "demo.toml"
    config.write_text(DEMO_TOML.format(split=max_id // 2, first=posts // 4))
    return config
