"""Benchmark kohaku's download stage against img2dataset 1.47.0 on the same local images.

    bash bench/setup_img2dataset.sh                   # once: bench/.venv-img2dataset
    .venv/bin/python bench/download_compare.py        # 2,000 images, WebP q90 and JPEG q95
    .venv/bin/python bench/download_compare.py --images 200 --format jpeg --skip-img2dataset
    .venv/bin/python bench/download_compare.py --repeat 0    # only kohaku's cost split

Generates the images once (bench/dl_images.py: deterministic, mixed sizes with the
shortest side >= 1024, mostly JPEG, some PNG) into bench/out/dl-images/ and serves them
from bench/image_server.py (a ThreadingHTTPServer on 127.0.0.1, in its own process).
kohaku: `kohaku.download.shard.download_shard` on a DataFrame (id, md5, file_ext, file_url)
with one 1024x1024 bucket (shortest side to 1024, centre crop), md5 verification and
full decode on, JPEG draft and resize library (`--resize-library`: pyvips or pillow) as
download.py's defaults unless given. img2dataset:
bench/img2dataset_side.py in bench/.venv-img2dataset with the same URLs and md5s,
`resize_mode="center_crop"`, `image_size=1024`, the same output format and quality,
`processes_count=2`. Each side runs `--repeat` times, alternating. Per run: images/s
(images written per wall second of the call; kohaku's process start and imports
excluded, img2dataset's worker start included) and CPU ms per image (user + sys of every
thread and process of that side, not the image server's), which a shared machine
disturbs much less than wall time, and the 1-minute load average before and after. Then
kohaku's cost per image, one image at a time, on the first `--split-images` images:
fetch, md5, decode and place + fit (Lanczos) through Pillow and through libvips, encode,
as process CPU time (libvips works in its own threads) and wall time.
Writes bench/out/dl-compare/ (outputs, url list, summary.json); prints tables and JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from dl_images import CACHE, ensure_images

from kohaku.download import resize_vips
from kohaku.download.config import BucketConfig, DownloadConfig
from kohaku.download.placement import bucket_set, place
from kohaku.download.resize import decode, encode, fit, to_pil
from kohaku.download.shard import download_shard
from kohaku.fetch import FetchConfig, Fetcher

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "out" / "dl-compare"
I2D_PYTHON = BENCH / ".venv-img2dataset" / "bin" / "python"
QUALITY = {"webp": 90, "jpeg": 95}
BUCKETS = BucketConfig(area=1024 * 1024, min_side=1024, max_side=1024, step=64)


class ImageServer:
    """bench/image_server.py in a child process; `.base` is its URL."""

    def __init__(self, folder: Path):
        cmd = [sys.executable, str(BENCH / "image_server.py"), "--dir", str(folder)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def __enter__(self) -> ImageServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def kohaku_config(fmt: str, threads: int, draft: bool | None = None,
                  library: str | None = None) -> DownloadConfig:  # fmt: skip
    """draft, library None: download.py's defaults."""
    fetch = FetchConfig(allowed_hosts=["127.0.0.1"], per_host_concurrency=threads,
                        per_host_rate=1000)  # fmt: skip
    extra = {} if draft is None else {"jpeg_draft": draft}
    extra |= {} if library is None else {"resize_library": library}
    return DownloadConfig(fetch=fetch, threads=threads, image_format=fmt,
                          quality=QUALITY[fmt], buckets=BUCKETS, **extra)  # fmt: skip


def run_kohaku(posts: pl.DataFrame, fmt: str, threads: int, draft: bool | None,
               library: str | None) -> dict:  # fmt: skip
    out = WORK / f"kohaku-{fmt}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = kohaku_config(fmt, threads, draft, library)
    load0 = os.getloadavg()[0]
    cpu0, t0 = cpu_s(resource.RUSAGE_SELF), time.perf_counter()
    ledger = download_shard(posts, cfg, out)
    wall, cpu = time.perf_counter() - t0, cpu_s(resource.RUSAGE_SELF) - cpu0
    ok = ledger.filter(pl.col("status") == "ok")
    errors = ledger.filter(pl.col("status") != "ok")["error"].value_counts()
    return {
        "wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "ok": ok.height, "rows": ledger.height,
        "errors": {r["error"]: r["count"] for r in errors.iter_rows(named=True)},
        "md5_checked": ok["md5_checked"].sum() if "md5_checked" in ok.columns else None,
        "out_bytes": sum((out / p).stat().st_size for p in ok["path"]),
        "library": cfg.resize_library, "load_before": load0, "load_after": os.getloadavg()[0],
    }  # fmt: skip


def run_img2dataset(urls: Path, fmt: str, threads: int) -> dict:
    out = WORK / f"img2dataset-{fmt}"
    cmd = [str(I2D_PYTHON), str(BENCH / "img2dataset_side.py"), "--urls", str(urls),
           "--out", str(out), "--format", "jpg" if fmt == "jpeg" else fmt,
           "--quality", str(QUALITY[fmt]), "--threads", str(threads)]  # fmt: skip
    cpu0, load0 = cpu_s(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"img2dataset failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # the side process and its (joined) workers, imports included; not the image server
    res["cpu_s"] = round(cpu_s(resource.RUSAGE_CHILDREN) - cpu0, 2)
    res["load_before"], res["load_after"] = load0, os.getloadavg()[0]
    return res


def cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def cost_split(posts: pl.DataFrame, count: int) -> dict:
    """Mean ms per image of each step, one image at a time, on the first `count` posts:
    CPU time of the process (`time.process_time`: libvips computes in its own threads;
    nothing else runs in this process meanwhile) and wall. decode_vips is the header and
    the full decode into memory (`resize_vips.load_rgb`), resize_vips the Lanczos-3
    resample of the crop and the copy into a Pillow image for the encoder."""
    buckets = bucket_set(BUCKETS)
    steps = ["fetch", "md5", "decode", "resize", "decode_vips", "resize_vips",
             "encode_webp90", "encode_jpeg95"]  # fmt: skip
    cpu: dict[str, list[float]] = {s: [] for s in steps}
    wall: dict[str, list[float]] = {s: [] for s in steps}

    def timed(step: str, fn, *args, **kwargs):
        c0, t0 = time.process_time(), time.perf_counter()
        value = fn(*args, **kwargs)
        cpu[step].append(time.process_time() - c0)
        wall[step].append(time.perf_counter() - t0)
        return value

    def place_fit(img):
        return fit(img, place(img.width, img.height, BUCKETS, buckets))

    def vips_decode(data):
        header = resize_vips.open_checked(data, 10**9)
        return resize_vips.load_rgb(header, data)

    def vips_fit(img):
        return to_pil(resize_vips.fit(img, place(img.width, img.height, BUCKETS, buckets)))

    with Fetcher(kohaku_config("webp", 1).fetch) as fetcher:
        for post in posts.head(count).iter_rows(named=True):
            data = timed("fetch", fetcher.fetch, post["file_url"]).data
            assert timed("md5", hashlib.md5, data).hexdigest() == post["md5"]
            img = timed("decode", decode, data)
            out = timed("resize", place_fit, img)
            vimg = timed("decode_vips", vips_decode, data)
            timed("resize_vips", vips_fit, vimg)
            timed("encode_webp90", encode, out, "webp", 90)
            timed("encode_jpeg95", encode, out, "jpeg", 95)
    mean = statistics.fmean
    return {
        "cpu": {s: round(1000 * mean(v), 2) for s, v in cpu.items()},
        "wall": {s: round(1000 * mean(v), 2) for s, v in wall.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--format", choices=["webp", "jpeg", "both"], default="both")
    ap.add_argument("--threads", type=int, default=8, help="kohaku download threads")
    ap.add_argument("--i2d-threads", type=int, default=16, help="img2dataset threads/process")
    ap.add_argument("--repeat", type=int, default=2, help="0 = only the cost split")
    ap.add_argument("--skip-img2dataset", action="store_true")
    ap.add_argument(
        "--jpeg-draft",
        choices=["default", "on", "off"],
        default="default",
        help="kohaku's DownloadConfig.jpeg_draft (default: download.py's)",
    )
    ap.add_argument("--resize-library", choices=["default", "pyvips", "pillow"],
                    default="default", help="kohaku's DownloadConfig.resize_library")  # fmt: skip
    ap.add_argument("--split-images", type=int, default=100, help="0 = no cost split")
    args = ap.parse_args()
    if not args.skip_img2dataset and not I2D_PYTHON.exists():
        sys.exit(f"{I2D_PYTHON} missing: run bash bench/setup_img2dataset.sh")
    formats = ["webp", "jpeg"] if args.format == "both" else [args.format]

    images = ensure_images(args.images)
    WORK.mkdir(parents=True, exist_ok=True)
    draft = {"default": None, "on": True, "off": False}[args.jpeg_draft]
    library = None if args.resize_library == "default" else args.resize_library
    used = kohaku_config("webp", 1, draft, library)
    pixels = [i["width"] * i["height"] for i in images]
    summary: dict = {
        "images": len(images), "cpus": os.cpu_count(), "kohaku_threads": args.threads,
        "img2dataset_threads_per_process": args.i2d_threads, "kohaku_jpeg_draft": used.jpeg_draft,
        "kohaku_resize_library": used.resize_library,
        "input_mb": round(sum(i["bytes"] for i in images) / 1e6, 1),
        "input_mpx_mean": round(statistics.fmean(pixels) / 1e6, 2),
        "runs": {},
    }  # fmt: skip
    with ImageServer(CACHE) as server:
        posts = pl.DataFrame({
            "id": list(range(1, len(images) + 1)), "md5": [i["md5"] for i in images],
            "file_ext": [i["format"] for i in images],
            "file_url": [f"{server.base}/{i['name']}" for i in images],
        })  # fmt: skip
        urls = WORK / f"urls-{len(images)}.parquet"
        posts.select(url="file_url", md5="md5").write_parquet(urls)
        for fmt in formats:
            runs = summary["runs"][fmt] = {"kohaku": [], "img2dataset": []}
            for rep in range(args.repeat):
                res = run_kohaku(posts, fmt, args.threads, draft, library)
                runs["kohaku"].append(res)
                print(f"{fmt} #{rep + 1} kohaku: {res}", file=sys.stderr)
                if not args.skip_img2dataset:
                    res = run_img2dataset(urls, fmt, args.i2d_threads)
                    runs["img2dataset"].append(res)
                    print(f"{fmt} #{rep + 1} img2dataset: {res}", file=sys.stderr)
        if args.split_images:
            summary["cost_ms"] = cost_split(posts, min(args.split_images, len(images)))
    print_tables(summary)
    (WORK / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


def rate(run: dict) -> float:
    return run["ok"] / run["wall_s"]


def cpu_ms(run: dict) -> float:
    return 1000 * run["cpu_s"] / max(1, run["ok"])


def _best(values: list[float], pick) -> str:
    if not values:
        return "-"
    return f"{pick(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"


def print_tables(summary: dict) -> None:
    n = summary["images"]
    print(f"\n{n} images, {summary['input_mb']} MB, {summary['input_mpx_mean']} Mpx mean. "
          "img/s: images written / wall s, best run (all runs); CPU: CPU ms per image "
          "written, lowest run (user + sys, all processes and threads of that side)")  # fmt: skip
    print("| output | kohaku img/s | img2dataset img/s | wall ratio | kohaku CPU ms/img | "
          "img2dataset CPU ms/img | CPU ratio | ok (kohaku / i2d) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for fmt, runs in summary["runs"].items():
        k, i = runs["kohaku"], runs["img2dataset"]
        if not k:  # --repeat 0: cost split only
            continue
        kr, ir = [rate(r) for r in k], [rate(r) for r in i]
        kc, ic = [cpu_ms(r) for r in k], [cpu_ms(r) for r in i]
        oks = f"{min(r['ok'] for r in k)} / {min(r['ok'] for r in i) if i else '-'}"
        cells = [f"{fmt} q{QUALITY[fmt]}", _best(kr, max), _best(ir, max),
                 f"{max(kr) / max(ir):.2f}x" if ir else "-", _best(kc, min), _best(ic, min),
                 f"{min(ic) / min(kc):.2f}x" if ic else "-", oks]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    cost = summary.get("cost_ms")
    if cost:
        print("\nkohaku, one image at a time, mean ms per image (process CPU time; wall below):")
        print("| | " + " | ".join(cost["cpu"]) + " |")
        print("|---|" + "---|" * len(cost["cpu"]))
        for kind in ("cpu", "wall"):
            print(f"| {kind} | " + " | ".join(f"{v:.1f}" for v in cost[kind].values()) + " |")
        c = cost["cpu"]
        base = c["fetch"] + c["md5"]
        for fmt, enc in (("webp", "encode_webp90"), ("jpeg", "encode_jpeg95")):
            vips = base + c["decode_vips"] + c["resize_vips"] + c[enc]
            pil = base + c["decode"] + c["resize"] + c[enc]
            print(f"{fmt}: pyvips {vips:.0f} CPU ms/image = {1000 / vips:.1f} img/s per core; "
                  f"Pillow {pil:.0f} ms = {1000 / pil:.1f} img/s per core")  # fmt: skip


if __name__ == "__main__":
    main()
