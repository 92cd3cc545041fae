"""Benchmark: sample + tag on a synthetic danbooru2023 SQLite database.

    python bench/bench_dataset.py --posts 200000          # the issue's 2.5 s target
    python bench/bench_dataset.py --posts 7000000 --preset epsilon
    python bench/bench_dataset.py --posts 200000 --source bench/out/pq200k   # exported parquet
    python bench/bench_dataset.py --posts 200000 --texts 0.9   # + a text file (issue 14)

Generates the database once into bench/out/ (reused), then times the two stages as the
library runs them (fresh run dir each repeat) and prints wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

from kohaku.config import load_config
from kohaku.demo.synth import generate_danbooru_db
from kohaku.sample import run_sample
from kohaku.tag import run_tag

OUT = Path(__file__).resolve().parent / "out"


def ensure_db(posts: int, seed: int) -> Path:
    path = OUT / f"synth-{posts}-s{seed}.db"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        summary = generate_danbooru_db(path, posts, seed=seed)
        print(f"generated {summary.posts:,} posts, {summary.relations:,} tag rows "
              f"in {time.perf_counter() - t0:.1f}s -> {path}")  # fmt: skip
    return path


def ensure_texts(posts: int, fraction: float) -> Path:
    """A natural-language caption file (id, text) for about `fraction` of the ids, in id
    order (as the published Florence-2 sets are), ~300 characters each."""
    import numpy as np
    import polars as pl

    path = OUT / f"texts-{posts}-{fraction}.parquet"
    if not path.exists():
        ids = np.arange(int(posts * 1.1))
        ids = ids[np.random.default_rng(0).random(len(ids)) < fraction]
        text = pl.format("The image shows character number {} standing in a garden with long "
                         "hair and a red ribbon. She wears a school uniform, a pleated skirt "
                         "and black thighhighs, and smiles at the viewer while the evening "
                         "sun lights the flowers behind her.", pl.col("id"))  # fmt: skip
        pl.DataFrame({"id": ids}).with_columns(text=text).write_parquet(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="epsilon")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--source", type=Path, help="read this instead of the generated SQLite "
                    "file, e.g. its `kohaku export-parquet` folder")  # fmt: skip
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory limit, e.g. 6GB")
    ap.add_argument("--batch-posts", type=int, default=1_000_000, help="tag stage batch size")
    ap.add_argument("--texts", type=float, default=None, help="join a generated text file "
                    "(tag.text_captions) covering this fraction of the ids")  # fmt: skip
    args = ap.parse_args()
    db = args.source or ensure_db(args.posts, args.seed)
    run_dir = OUT / "run"
    # the preset's id ranges are for ~7.8M ids; scale them to this database
    scale = args.posts * 1.1 / 7_800_000
    overrides = [f'sample.source="{db}"', "sample.seed=1"]
    if args.texts is not None:
        overrides.append(f'tag.text_captions="{ensure_texts(args.posts, args.texts)}"')
    cfg = load_config(preset=args.preset, overrides=overrides)
    ranges = [r.model_copy(update={
        "start": int(r.start * scale), "end": None if r.end is None else int(r.end * scale),
        "count": r.count if r.count == "all" else max(1, int(r.count * scale))})
        for r in cfg.sample.ranges]  # fmt: skip
    sample_cfg = cfg.sample.model_copy(update={"ranges": ranges})
    for i in range(args.repeat):
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        sample = run_sample(
            sample_cfg, run_dir, threads=args.threads, memory_limit=args.memory_limit
        )
        t1 = time.perf_counter()
        tag = run_tag(cfg.tag, run_dir, batch_posts=args.batch_posts)
        t2 = time.perf_counter()
        print(json.dumps({
            "repeat": i, "posts_in_db": args.posts, "chosen": sample.counts["posts"],
            "captions": tag.counts["captions"], "sample_s": round(t1 - t0, 3),
            "tag_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
            "sample_timings": sample.timings, "tag_timings": tag.timings,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
