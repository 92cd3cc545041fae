"""Benchmark: counting caption tokens for the train manifest, and the per-step tag cut.

    python bench/bench_tokens.py                        # tiny BPE tokenizer, 100k captions
    python bench/bench_tokens.py --tokenizer DIR        # a CLIP tokenizer folder (SDXL's)

Captions are made like danbooru's: tags drawn by post count from
`kohaku/data/danbooru_tags.csv.gz` (count and character, copyright and artist in the head,
about 25 general tags in the body, quality, date and rating in the tail), laid out as the
trainer sees them (head, body, tail joined by ", "). Prints, per 100k captions:
- `token_stats` (what the trainer runs once for the manifest): each distinct tag tokenized
  once, the per-caption sums in Polars;
- every full caption tokenized by the tokenizer itself (batched), for comparison, and
  whether both agree;
- the per-step cost of `draw_caption` with a `max_tokens` budget (µs per caption).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import time
from pathlib import Path

import numpy as np
import polars as pl
from transformers import CLIPTokenizer

from kohaku.sdxl.tiny import tiny_tokenizers
from kohaku.train.config import CaptionConfig
from kohaku.train.data import caption_rng, draw_caption
from kohaku.train.tokens import TagBudget, TagLengths, caption_tokens, token_stats

TAGS = Path(__file__).resolve().parents[1] / "kohaku/data/danbooru_tags.csv.gz"


def tag_pools() -> dict[int, tuple[list[str], np.ndarray]]:
    """Tag texts and draw weights by category (0 general, 1 artist, 3 copyright, 4 character)."""
    pools: dict[int, tuple[list[str], list[float]]] = {}
    with gzip.open(TAGS, "rt") as f:
        for name, category, count, _ in csv.reader(f):
            names, weights = pools.setdefault(int(category), ([], []))
            names.append(name.replace("_", " ") if len(name) > 3 else name)
            weights.append(float(count))
    return {c: (n, np.asarray(w) / sum(w)) for c, (n, w) in pools.items()}


def captions(n: int, seed: int = 0) -> pl.DataFrame:
    rng, pools = np.random.default_rng(seed), tag_pools()

    def draw(category: int, k: int) -> list[str]:
        names, weights = pools[category]
        return [names[i] for i in rng.choice(len(names), size=k, p=weights)]

    heads, bodies, tails = [], [], []
    quality = ["masterpiece", "best quality", "great quality", "good quality", "normal quality"]
    for _ in range(n):
        heads.append(["1girl", *draw(4, 1), *draw(3, 1), *draw(1, 1)])
        bodies.append(list(dict.fromkeys(draw(0, int(rng.integers(10, 40))))))
        tails.append([quality[int(rng.integers(5))], "newest", "safe"])
    return pl.DataFrame({"head": heads, "body": bodies, "tail": tails})


class Clock:
    """Wall and CPU seconds (the CPU time of every thread: a shared machine's load inflates
    the wall time, not the work)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def per(self, scale: float, unit: str = "s") -> str:
        return f"{self.wall * scale:.2f} {unit} wall, {self.cpu * scale:.2f} {unit} CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, help="a CLIP tokenizer folder; default: tiny BPE")
    ap.add_argument("--captions", type=int, default=100_000)
    args = ap.parse_args()
    tok = (CLIPTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
           if args.tokenizer else tiny_tokenizers()[0])  # fmt: skip
    frame = captions(args.captions)
    per = 100_000 / args.captions
    with Clock() as c:
        stats = token_stats(frame, TagLengths(tok), 225)
    print(f"token_stats: {c.per(per)} per 100k captions; {stats}")
    texts = [", ".join([*h, *b, *t]) for h, b, t in frame.iter_rows()]
    with Clock() as c:
        whole = [len(i) for i in tok(texts, add_special_tokens=False, verbose=False).input_ids]
    same = whole == caption_tokens(frame, TagLengths(tok)).tolist()
    print(f"tokenizing every caption: {c.per(per)} per 100k; the sums agree: {same}")
    cfg = CaptionConfig(max_tokens=75)
    budget = TagBudget.of(tok, cfg)
    rows = frame.head(2000).rows()
    for h, b, t in rows:  # learn the tags first: the trainer's rank 0 has them all
        budget.lengths.learn([*h, *b, *t])
    for name, fit in (("without a budget", None), ("max_tokens 75", budget)):
        with Clock() as c:
            cut = sum(draw_caption(h, b, t, cfg, caption_rng(0, 0, i), fit).cut
                      for i, (h, b, t) in enumerate(rows))  # fmt: skip
        print(f"draw_caption {name}: {c.per(1e6 / len(rows), 'µs')} per caption, "
              f"{cut} of {len(rows)} cut")  # fmt: skip


if __name__ == "__main__":
    main()
