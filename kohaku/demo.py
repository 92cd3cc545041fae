"""The bundled demo: a small synthetic danbooru2023 database and a run config for it.

Writes `<dir>/metadata/danbooru.db` (once) and `<dir>/demo.toml`.
"""

from __future__ import annotations

from pathlib import Path

from kohaku.synth import generate_danbooru_db

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
"""


def prepare_demo(root: Path, posts: int = 3000, seed: int = 0) -> Path:
    """Generate the demo database if missing and write the demo config; returns its path."""
    db = root / "metadata" / "danbooru.db"
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        generate_danbooru_db(db, posts, seed=seed)
    max_id = round(posts * 1.1)
    config = root / "demo.toml"
    config.write_text(DEMO_TOML.format(split=max_id // 2, first=posts // 4))
    return config
