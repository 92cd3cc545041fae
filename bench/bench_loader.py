"""Benchmark: the train stage's batch loader (issue 12, "Keep the GPU fed").

    python bench/bench_loader.py                          # all five parts, ~10 minutes
    python bench/bench_loader.py --parts decode loader    # only those parts

Writes `bench/out/loader/` (git-ignored): `--images` pictures of 1024x1024 per format, WebP q90
(method 4) and JPEG q95 (4:4:4), encoded by the download stage's
`kohaku.download.resize.encode` from the photo-like pictures of bench/dl_images.py (centre
crop, Lanczos to 1024x1024); a run dir over each format (buckets manifest, captions); a tiny
SDXL folder. Prints:

1. decode: CPU ms per image on one thread, Pillow against libvips (the download stage's
   decoder) and, for WebP, libwebp called directly (`kohaku.train.images.FASTER` names the
   one used), and one image's whole cost in a batch of 4 on the old path (Pillow decode,
   `np.stack`, then the float conversion on the CPU: permute, float, /127.5 - 1,
   contiguous) against the new one (`images.read_batch`: each image decoded into its slot
   of one uint8 batch).
2. loader: `kohaku.train.loader.batch_loader` with 1 and 2 workers, batch 4 at 1024x1024,
   batches taken as fast as they come (no training): images/s (wall clock), images per CPU
   second of the workers (per core), and the training process's CPU ms per batch.
3. share: what the items cost each worker at `--share-posts` synthetic posts: the Polars
   columns pickled (what a worker would unpickle and hold) against `loader.SharedItems`
   (built once, sent as handles to shared memory).
4. tiny: a `Trainer` on the tiny SDXL, batch 4 at `--tiny-size` px (64: the test size; VAE
   encode, both text encoders, Lion8bit): ms per `train_step` with every batch already in
   memory, and with batches from the loader with 0 workers (in series with the step, as
   before the loader), 1 and 2 workers. At 64 px a batch loads in a few ms, so this shows
   what the loader costs the step, not what it hides.
5. standin: what it hides at 1024x1024: the training process waits `--gpu-ms` per batch
   of 4 (235: the issue's 17 images/s on an H100; waiting for the GPU takes no CPU), then
   takes the next batch; ms per step with the old path in series (Pillow, float on the CPU),
   and with the loader's 0, 1 and 2 workers. Fully hidden loading gives `--gpu-ms`.

The load average is printed at the start and end: this machine is shared, and wall-clock
figures move with its load; the CPU-time figures move much less.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyvips
import torch
from PIL import Image

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # dl_images
sys.path.insert(0, str(BENCH.parent))  # kohaku, when run from anywhere

from dl_images import render  # noqa: E402

from kohaku.download.resize import encode  # noqa: E402
from kohaku.train import images  # noqa: E402
from kohaku.train.config import CaptionConfig, LoaderConfig, TrainConfig  # noqa: E402
from kohaku.train.data import BucketBatches, DataPosition, load_items  # noqa: E402
from kohaku.train.loader import BatchOrder, BatchSource, batch_loader  # noqa: E402

OUT = BENCH / "out" / "loader"
CPU = torch.device("cpu")
SIZE = 1024
FORMATS = {"webp": ("webp", 90), "jpg": ("jpeg", 95)}  # extension: (encoder format, quality)
PARTS = ("decode", "loader", "share", "tiny", "standin")
GROUPS = ("count", "character", "copyright", "artist", "general", "meta", "rating_tags")


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


# ---------------------------------------------------------------- inputs


def make_images(n: int, size: int, folder: Path) -> dict[str, list[Path]]:
    """`n` pictures per format at `size` x `size` (reused when present)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[Path]] = {ext: [] for ext in FORMATS}
    for i in range(n):
        todo = [ext for ext in FORMATS if not (folder / f"{i:04d}.{ext}").is_file()]
        if todo:
            picture = _square(render(20261212, i)[0], size)
            for ext in todo:
                fmt, quality = FORMATS[ext]
                (folder / f"{i:04d}.{ext}").write_bytes(encode(picture, fmt, quality))
        for ext in FORMATS:
            paths[ext].append(folder / f"{i:04d}.{ext}")
    return paths


def _square(data: bytes, size: int) -> Image.Image:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.Resampling.LANCZOS
    )


def make_run(run: Path, files: list[Path], size: int) -> Path:
    """A run dir whose buckets manifest and captions list `files` (one bucket)."""
    n = len(files)
    (run / "buckets").mkdir(parents=True, exist_ok=True)
    (run / "tag").mkdir(parents=True, exist_ok=True)
    pl.DataFrame({
        "id": range(n), "path": [str(f.resolve()) for f in files], "orig_w": [size] * n,
        "orig_h": [size] * n, "bucket_w": [size] * n, "bucket_h": [size] * n,
        "crop_left": [0] * n, "crop_top": [0] * n,
    }).write_parquet(run / "buckets/manifest.parquet")  # fmt: skip
    tags = {g: [[f"{g}_{k}_{i % 7}" for k in range(6 if g == "general" else 1)]
                for i in range(n)] for g in GROUPS}  # fmt: skip
    pl.DataFrame(
        {"id": range(n), **tags, "quality": ["masterpiece"] * n, "date": ["newest"] * n},
        schema_overrides={g: pl.List(pl.String) for g in GROUPS},
    ).write_parquet(run / "tag/captions.parquet")
    return run


# ---------------------------------------------------------------- 1. decode


def read_vips(path: Path, bucket: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] through libvips (the download stage's decoder), one thread."""
    img = pyvips.Image.new_from_file(str(path), access="sequential", fail_on="truncated")
    assert (img.width, img.height) == bucket and img.bands == 3
    return np.frombuffer(img.write_to_memory(), dtype=np.uint8).reshape(img.height, img.width, 3)


DECODERS = {"pillow": images.read_pillow, "libvips": read_vips, "libwebp": images.read_libwebp}


def cpu_ms(fn, *args, repeat: int = 1) -> float:
    start = time.process_time()
    for _ in range(repeat):
        fn(*args)
    return (time.process_time() - start) * 1000 / repeat


def old_float(pixels: np.ndarray) -> torch.Tensor:
    """What `load_batch` did on the CPU before the loader: uint8 [B, H, W, 3] to float32
    [B, 3, H, W] in [-1, 1]."""
    batch = torch.from_numpy(pixels)
    return (batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous()


def old_pixels(paths: list[Path], bucket: tuple[int, int]) -> torch.Tensor:
    """The pixels as `load_batch` made them before the loader: Pillow, stacked, float."""
    return old_float(np.stack([images.read_pillow(p, bucket) for p in paths]))


def bench_decode(paths: dict[str, list[Path]], repeat: int) -> None:
    """Every decoder interleaved per image; medians over the images."""
    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)
    bucket = (SIZE, SIZE)
    print(f"\n## decode, one thread, {SIZE}x{SIZE}, median CPU ms per image ({load()})")
    print("| format | Pillow | libvips | libwebp | used | old path: Pillow, stack, float "
          "| new path: `read_batch` |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for ext, files in paths.items():
        names = [n for n in DECODERS if n != "libwebp" or ext == "webp"]
        times: dict[str, list[float]] = {n: [] for n in [*names, "old", "new"]}
        for path in files:
            for name in names:
                times[name].append(cpu_ms(DECODERS[name], path, bucket, repeat=repeat))
            four = [path] * 4  # a batch of 4, per image
            times["old"].append(cpu_ms(old_pixels, four, bucket, repeat=repeat) / 4)
            times["new"].append(cpu_ms(images.read_batch, four, bucket, repeat=repeat) / 4)
        med = {k: statistics.median(v) for k, v in times.items()}
        used = images.FASTER.get(f".{ext}", "pillow")
        old, new = med["old"], med["new"]
        cells = [f"{med[n]:.1f}" if n in med else "-" for n in DECODERS]
        print(f"| {ext} | {' | '.join(cells)} | {used} | {old:.1f} ({1000 / old:.0f}/s) | "
              f"{new:.1f} ({1000 / new:.0f}/s) |")  # fmt: skip


# ---------------------------------------------------------------- 2. loader


def _stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, ..., utime (11), stime (12)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def descendants_cpu() -> float:
    """CPU seconds of every process below this one (the forkserver and its workers)."""
    parent, cpu = {}, {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = _stat(entry.name)
        except OSError:  # gone meanwhile
            continue
        parent[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mine, grew = {os.getpid()}, True
    while grew:
        below = {pid for pid, ppid in parent.items() if ppid in mine} - mine
        mine, grew = mine | below, bool(below)
    return sum(cpu[pid] for pid in mine if pid != os.getpid())


def bench_loader(runs: dict[str, Path], batches: int) -> None:
    print(f"\n## loader, batch 4 at {SIZE}x{SIZE}, no training ({load()})")
    print("| format | workers | images/s | images/s per worker | images per worker CPU s "
          "| training process CPU ms/batch |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for ext, run in runs.items():
        items = load_items(run / "buckets/manifest.parquet", run / "tag/captions.parquet")
        order = BatchOrder(BucketBatches(items, 4), DataPosition())
        source = BatchSource(items, run, CaptionConfig(), 0)
        for workers in (1, 2):
            cfg = LoaderConfig(workers=workers, prefetch=2)
            stream = batch_loader(source, order, cfg, torch.device("cpu"))
            for _ in range(2 * workers):  # start-up and the first batches
                next(stream)
            before = descendants_cpu()
            wall, mine = time.perf_counter(), time.process_time()
            for _ in range(batches):
                next(stream)
            wall, mine = time.perf_counter() - wall, time.process_time() - mine
            worker_cpu = descendants_cpu() - before
            n = 4 * batches
            print(f"| {ext} | {workers} | {n / wall:.1f} | {n / wall / workers:.1f} | "
                  f"{n / worker_cpu:.1f} | {1000 * mine / batches:.1f} |")  # fmt: skip
            del stream


# ---------------------------------------------------------------- 2b. sharing the items


def bench_share(posts: int) -> None:
    """What a worker gets of `posts` synthetic posts (25 of 5,000 general tags each): the
    Polars columns pickled (as without `SharedItems`) against `SharedItems` sent the way
    multiprocessing sends a worker its dataset."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions)

    from kohaku.train.data import PARTS, BucketItems
    from kohaku.train.loader import SharedItems

    rng = np.random.default_rng(0)
    tags = np.array([f"general_tag_{i}" for i in range(5000)], dtype=object)
    ids = np.arange(posts, dtype=np.int64) * 7 + 1000
    body = pl.Series([tags[rng.integers(0, 5000, 25)].tolist() for _ in range(posts)],
                     dtype=pl.List(pl.String))  # fmt: skip
    items = BucketItems(
        ids=ids, bucket=np.full((posts, 2), SIZE), original_size=np.full((posts, 2), 2 * SIZE),
        crop=np.zeros((posts, 2), np.int64),
        paths=pl.Series("path", [f"download/images/{i % 1000:04d}/{i}.webp" for i in ids]),
        parts=pl.DataFrame({"head": [["1girl", "solo"]] * posts, "body": body,
                            "tail": [["masterpiece", "newest", "safe"]] * posts},
                           schema={p: pl.List(pl.String) for p in PARTS}),
    )  # fmt: skip
    print(f"\n## what a worker gets, {posts:,} posts ({load()})")
    print("| form | build s | sent MB | send s | receive s | memory per worker |")
    print("|---|---|---|---|---|---|")
    start = time.perf_counter()
    sent = pickle.dumps((items.paths, items.parts))
    send = time.perf_counter() - start
    start = time.perf_counter()
    pickle.loads(sent)
    print(f"| Polars columns, pickled | - | {len(sent) / 1e6:.0f} | {send:.1f} | "
          f"{time.perf_counter() - start:.1f} | a copy each |")  # fmt: skip
    start = time.perf_counter()
    shared = SharedItems(items)
    build = time.perf_counter() - start
    start = time.perf_counter()
    sent = ForkingPickler.dumps(shared)
    send = time.perf_counter() - start
    start = time.perf_counter()
    pickle.loads(sent)
    size = sum(t.numel() * t.element_size() for t in _tensors(shared)) / 1e6
    print(
        f"| `SharedItems` | {build:.1f} | {len(sent) / 1e6:.3f} | {send:.3f} | "
        f"{time.perf_counter() - start:.3f} | none: {size:.0f} MB shared by all |"
    )


def _tensors(shared) -> list[torch.Tensor]:
    lists = [t for part in shared.parts.values()
             for t in (part.codes, part.offsets, part.vocab.data, part.vocab.offsets)]  # fmt: skip
    return [shared.ids, shared.numbers, shared.paths.data, shared.paths.offsets, *lists]


# ---------------------------------------------------------------- 3. overlap


def bench_tiny(run: Path, model: Path, steps: int, rounds: int) -> None:
    """`Trainer.train_step` on the tiny SDXL, batches in memory or from the loader."""
    from kohaku.train.loop import Dist, Trainer

    cfg = TrainConfig.model_validate({
        "model": {"path": str(model)}, "batch_size": 4, "layout": "epsilon",
        "optim": {"warmup_steps": 0}, "max_steps": 1000,
    })  # fmt: skip
    trainer = Trainer(cfg, run, Dist(0, 1, torch.device("cpu")))
    order = BatchOrder(trainer.batches, DataPosition())
    ahead = [trainer.source[b] for b, _ in zip(order, range(steps + 4), strict=False)]
    size = int(ahead[0].target_size[0, 0])

    def in_memory():
        batches = iter(ahead)
        return lambda: trainer.train_step([next(batches)])

    def loader(workers: int):
        stream = batch_loader(trainer.source, order, LoaderConfig(workers=workers), CPU)
        return lambda: trainer.train_step([next(stream)])

    variants = {"memory": in_memory, **{w: functools.partial(loader, w) for w in (0, 1, 2)}}
    cells = _rounds(variants, steps, rounds)
    print(f"\n## overlap, tiny SDXL, batch 4 at {size}x{size} (JPEG), median ms per step "
          f"({load()})")  # fmt: skip
    print("| batches already in memory | loader, 0 workers | 1 worker | 2 workers |")
    print("|---|---|---|---|")
    print("| " + " | ".join(f"{c:.0f}" for c in cells.values()) + " |")


def bench_standin(runs: dict[str, Path], gpu_ms: float, steps: int, rounds: int) -> None:
    """Batch 4 at 1024x1024 against a stand-in for a GPU step: the training process waits
    `gpu_ms` (as it waits for the GPU), then takes the next batch."""
    print(f"\n## overlap, batch 4 at {SIZE}x{SIZE}, a {gpu_ms:.0f} ms stand-in GPU step, "
          f"median ms per step ({load()} at the start)")  # fmt: skip
    print("| format | old path in series (Pillow + float on CPU) | loader, 0 workers | "
          "1 worker | 2 workers |")  # fmt: skip
    print("|---|---|---|---|---|")
    for ext, run in runs.items():
        cells = _standin(run, gpu_ms / 1000, steps, rounds)
        print(f"| {ext} | " + " | ".join(f"{c:.0f}" for c in cells.values()) + " |")


def _standin(run: Path, wait: float, steps: int, rounds: int) -> dict:
    items = load_items(run / "buckets/manifest.parquet", run / "tag/captions.parquet")
    order = BatchOrder(BucketBatches(items, 4), DataPosition())
    source = BatchSource(items, run, CaptionConfig(), 0)

    def old():
        batches = iter(order)
        return lambda: (old_batch(source, next(batches)), time.sleep(wait))

    def loader(workers: int):
        stream = batch_loader(source, order, LoaderConfig(workers=workers), CPU)
        return lambda: (next(stream), time.sleep(wait))

    variants = {"old": old, **{w: functools.partial(loader, w) for w in (0, 1, 2)}}
    return _rounds(variants, steps, rounds)


def old_batch(source: BatchSource, batch) -> torch.Tensor:
    """`load_batch` as it was: Pillow, then float pixels made on the CPU."""
    from kohaku.train.data import load_batch

    load_batch(batch, source.items, source.run_dir, source.captions, 0, read_images=False)
    rows = source.items.rows(batch.ids)
    return old_pixels([source.run_dir / p for p in source.items.paths.gather(rows)], batch.bucket)


def _rounds(variants: dict, steps: int, rounds: int) -> dict:
    """Median ms per step of each variant: `rounds` rounds of every variant in turn (the
    load of a shared machine drifts), each a fresh step function (a fresh loader: one
    variant's workers never run during another's steps), 4 warm-up steps (with fewer, a
    worker still importing its modules competes with the timed steps), `steps` timed."""
    times: dict = {name: [] for name in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            step = make()
            for _ in range(4):  # warm-up: every worker has started and sent a batch
                step()
            for _ in range(steps):
                start = time.perf_counter()
                step()
                times[name].append(1000 * (time.perf_counter() - start))
            del step  # its loader's workers stop
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="pictures per format")
    ap.add_argument("--repeat", type=int, default=3, help="decodes per picture and library")
    ap.add_argument("--batches", type=int, default=24, help="batches timed per loader row")
    ap.add_argument("--steps", type=int, default=6, help="steps timed per overlap cell, round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every overlap variant")
    ap.add_argument("--tiny-size", type=int, default=64, help="image side for the tiny SDXL")
    ap.add_argument("--gpu-ms", type=float, default=235.0, help="the stand-in GPU step (the "
                    "issue: batch 4 at 17 images/s on an H100)")  # fmt: skip
    ap.add_argument("--share-posts", type=int, default=1_000_000, help="posts, share part")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"bench_loader: {os.cpu_count()} cores; {load()}")
    paths = make_images(args.images, SIZE, OUT / f"images-{SIZE}")
    runs = {ext: make_run(OUT / f"run-{ext}-{SIZE}", files, SIZE) for ext, files in paths.items()}
    if "decode" in args.parts:
        bench_decode(paths, args.repeat)
    if "loader" in args.parts:
        bench_loader(runs, args.batches)
    if "share" in args.parts:
        bench_share(args.share_posts)
    if "tiny" in args.parts:
        from kohaku.sdxl.tiny import write_tiny_sdxl

        model = OUT / "tiny-sdxl"
        if not (model / "model_index.json").is_file():
            write_tiny_sdxl(model)
        small = make_images(args.images, args.tiny_size, OUT / f"images-{args.tiny_size}")
        bench_tiny(make_run(OUT / f"run-jpg-{args.tiny_size}", small["jpg"], args.tiny_size),
                   model, args.steps, args.rounds)  # fmt: skip
    if "standin" in args.parts:
        bench_standin(runs, args.gpu_ms, args.steps, args.rounds)
    print(f"\ndone; {load()}")


if __name__ == "__main__":  # the loader's workers import this file again: keep it guarded
    main()
