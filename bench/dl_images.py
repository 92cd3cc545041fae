"""Deterministic test images for bench/download_compare.py and bench/resize_libs.py.

    python bench/dl_images.py --images 2000          # generate (or check) the cache

Writes `bench/out/dl-images/<i:05d>.<jpg|png>` and `manifest.json` (name, md5, bytes,
width, height, format per image). Image i depends only on (seed, i), so a run with fewer
images reuses the first ones of a larger cache. Sizes: shortest side 1024-2400 px, the
other 1-2 times it (at most 3000 px), either orientation, so every image is only ever
downscaled to a 1024 shortest side. Content is photo-like so that decoders, resamplers
and encoders do real work: a smooth colour field, soft-edged shapes, thin lines and a
pattern of fine detail, plus film-grain noise. Formats: 85 % JPEG at quality 90-95
(4:2:0, one in seven progressive), 15 % PNG (a third of them RGBA with soft alpha).
Needs only Pillow and numpy (so it runs in every bench venv).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / "out" / "dl-images"
SEED = 20261101


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    short = int(rng.integers(1024, 2401))
    long = min(3000, round(short * math.exp(rng.uniform(0.0, math.log(2.0)))))
    return (short, long) if rng.random() < 0.5 else (long, short)


def render(seed: int, index: int) -> tuple[bytes, str, tuple[int, int]]:
    """The encoded bytes, the extension and the size of image `index`."""
    rng = np.random.default_rng([seed, index])
    w, h = image_size(rng)
    field = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((w, h), Image.Resampling.BICUBIC)
    # shapes drawn at half size and scaled up: soft, anti-aliased edges without a blur
    shapes = Image.new("RGBA", (w // 2, h // 2), (0, 0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    for _ in range(int(rng.integers(6, 16))):
        x0, x1 = sorted(rng.integers(-w // 8, w // 2 + w // 8, 2).tolist())
        y0, y1 = sorted(rng.integers(-h // 8, h // 2 + h // 8, 2).tolist())
        colour = (*rng.integers(0, 256, 3).tolist(), int(rng.integers(120, 256)))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1 + 1, y1 + 1), fill=colour)
    shapes = shapes.resize((w, h), Image.Resampling.BICUBIC)
    img = Image.alpha_composite(img.convert("RGBA"), shapes)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(20, 60))):  # line art
        pts = rng.integers(0, (w, h), (int(rng.integers(2, 6)), 2)).ravel().tolist()
        draw.line(pts, fill=(*rng.integers(0, 80, 3).tolist(), 255), width=int(rng.integers(1, 4)))
    # a patch of fine detail (hatching close to the resampling limit)
    pw, ph = w // 4, h // 4
    px, py = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    freq = float(rng.uniform(0.15, 0.45))
    patch = 128 + 100 * np.sin(freq * (xx + 0.7 * yy) + 0.002 * xx * xx / max(1, pw / 512))
    img.paste(Image.fromarray(patch.astype(np.uint8)).convert("RGBA"), (px, py))
    arr = np.asarray(img, dtype=np.int16)
    noise = rng.normal(0.0, float(rng.uniform(1.5, 4.0)), (h, w, 1)).astype(np.int16)
    arr[..., :3] += noise
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    kind = rng.random()
    if kind < 0.85:
        quality = int(rng.integers(90, 96))
        progressive = rng.random() < 1 / 7
        Image.fromarray(arr[..., :3]).save(buf, "JPEG", quality=quality, progressive=progressive)
        return buf.getvalue(), "jpg", (w, h)
    if kind < 0.95:
        Image.fromarray(arr[..., :3]).save(buf, "PNG", compress_level=3)
    else:
        alpha = np.clip(np.linspace(120, 400, w)[None, :].repeat(h, 0), 0, 255).astype(np.uint8)
        arr[..., 3] = alpha
        Image.fromarray(arr, "RGBA").save(buf, "PNG", compress_level=3)
    return buf.getvalue(), "png", (w, h)


def _make(args: tuple[int, int, str]) -> dict:
    seed, index, folder = args
    for ext in ("jpg", "png"):
        path = Path(folder) / f"{index:05d}.{ext}"
        if path.is_file():
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
            break
    else:
        data, ext, size = render(seed, index)
        path = Path(folder) / f"{index:05d}.{ext}"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return {
        "name": path.name, "md5": hashlib.md5(data).hexdigest(), "bytes": len(data),
        "width": size[0], "height": size[1], "format": ext,
    }  # fmt: skip


def ensure_images(count: int, seed: int = SEED, folder: Path = CACHE, workers: int = 2) -> list:
    """Manifest entries of images 0..count-1, generating the missing ones."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        known = json.loads(manifest.read_text())
        if known["seed"] == seed and len(known["images"]) >= count:
            return known["images"][:count]
    print(f"generating {count} images into {folder} (once)", file=sys.stderr)
    jobs = [(seed, i, str(folder)) for i in range(count)]
    with ProcessPoolExecutor(workers) as pool:
        images = list(pool.map(_make, jobs, chunksize=8))
    manifest.write_text(json.dumps({"seed": seed, "images": images}, indent=0))
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    images = ensure_images(args.images, args.seed)
    fmts = {f: sum(1 for i in images if i["format"] == f) for f in ("jpg", "png")}
    mb = sum(i["bytes"] for i in images) / 1e6
    mpx = sum(i["width"] * i["height"] for i in images) / len(images) / 1e6
    print(f"{len(images)} images ({fmts}), {mb:.0f} MB, {mpx:.2f} Mpx on average")


if __name__ == "__main__":
    main()
