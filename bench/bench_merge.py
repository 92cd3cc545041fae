"""Benchmark: a streaming merge of two full-size SDXL checkpoints (time and peak RSS).

    python bench/bench_merge.py                      # SDXL 1.0 shapes, fp16 files of ~6.9 GB
    python bench/bench_merge.py --dtype fp8          # the same inputs, an fp8 (e4m3fn) output
    python bench/bench_merge.py --size half --keep   # half the widths (~1/4 the bytes); keep files
    python bench/bench_merge.py --reader mmap        # read through safetensors' safe_open instead

Inputs: SDXL 1.0's UNet, VAE, CLIP ViT-L and OpenCLIP bigG shapes (models built on the meta
device, so nothing is allocated) under their SGM single-file names (`sgm_state`), random fp16
weights written tensor by tensor with `kohaku.sdxl.tensors.write_safetensors`: the generator
holds one tensor at a time. The merge, `kohaku.merge.merge` of `0.5 * a + 0.5 * b`, runs in a
fresh child process that reports its own peak RSS (`ru_maxrss`), and its RSS once its imports
are done. Before it, the inputs are flushed and dropped from the page cache (fsync +
`posix_fadvise(DONTNEED)`, on these files only) so that they are read from disk; `--warm`
leaves them cached. A few output tensors are checked against the arithmetic. Files go to
`bench/out/merge/` (git-ignored) and are deleted at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from kohaku.sdxl.configs import SDXL_TEXT, SDXL_UNET, SDXL_VAE

OUT = Path(__file__).resolve().parent / "out" / "merge"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sdxl_shapes(size: str) -> dict:
    """SGM name -> meta tensor of SDXL 1.0 (`half`: every width halved)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from kohaku.sdxl.model import sgm_state

    k = 2 if size == "half" else 1
    unet = dict(
        SDXL_UNET,
        block_out_channels=[c // k for c in SDXL_UNET["block_out_channels"]],
        cross_attention_dim=2048 // k,
        projection_class_embeddings_input_dim=1536 + 1280 // k,
    )
    vae = dict(SDXL_VAE, block_out_channels=[c // k for c in SDXL_VAE["block_out_channels"]])

    def clip(hidden: int, layers: int, heads: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408,
            hidden_size=hidden // k,
            projection_dim=hidden // k,
            intermediate_size=4 * hidden // k,
            num_hidden_layers=layers,
            num_attention_heads=heads // k,
            max_position_embeddings=77,
            hidden_act=act,
        )

    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel.from_config(unet),
            "vae": AutoencoderKL.from_config(vae),
            "text_encoder": CLIPTextModel(clip(*SDXL_TEXT["text_encoder"])),
            "text_encoder_2": CLIPTextModelWithProjection(clip(*SDXL_TEXT["text_encoder_2"])),
        }
        return sgm_state(models)


def generate(path: Path, size: str, seed: int) -> dict:
    """Random fp16 SDXL single file, one tensor in memory at a time."""
    import torch

    from kohaku.sdxl.tensors import OutSpec, write_safetensors

    start = time.perf_counter()
    shapes = sdxl_shapes(size)
    specs = [OutSpec(k, torch.float16, tuple(v.shape)) for k, v in sorted(shapes.items())]

    def tensors():
        for i, spec in enumerate(specs):
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            yield torch.empty(spec.shape, dtype=torch.float16).uniform_(-0.05, 0.05, generator=g)

    meta = {"format": "pt", "modelspec.architecture": "stable-diffusion-xl-v1-base"}
    write_safetensors(path, specs, tensors(), meta)
    params = sum(v.numel() for v in shapes.values())
    return {
        "seconds": time.perf_counter() - start,
        "peak_rss_gb": peak_rss_gb(),
        "tensors": len(specs),
        "params": params,
        "bytes": path.stat().st_size,
    }


def use_mmap_reads() -> None:
    """For comparison: read each tensor through safetensors' `safe_open` (a memory map), as
    most merge tools do, instead of kohaku's plain reads."""
    from safetensors import safe_open

    from kohaku.sdxl.tensors import TensorFile

    def get(self: TensorFile, name: str, buf: object = None):
        if not hasattr(self, "_mapped"):
            self._mapped = safe_open(str(self.path), "pt")
        return self._mapped.get_tensor(name)

    TensorFile.get = get


def merge_child(a: Path, b: Path, out: Path, dtype: str, reader: str) -> dict:
    from kohaku.merge import MergeRecipe, merge

    if reader == "mmap":
        use_mmap_reads()
    rss_imported, cpu = peak_rss_gb(), cpu_seconds()
    recipe = MergeRecipe(
        models={"a": a, "b": b}, expression="0.5 * a + 0.5 * b", output=out, dtype=dtype
    )
    result = merge(recipe)
    return {
        "seconds": result.seconds,
        "cpu_seconds": cpu_seconds() - cpu,
        "load_average_1min_after": os.getloadavg()[0],
        "peak_rss_gb": peak_rss_gb(),
        "rss_after_imports_gb": rss_imported,
        "bytes": result.bytes,
        "tensors": result.tensors,
    }


def child(*args: str) -> dict:
    """Run this file's `--child` mode in a fresh process; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, "--child", *args]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def evict(path: Path) -> None:
    """Drop one file's pages from the page cache (after flushing them), so it is read cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def check(a: Path, b: Path, out: Path, dtype: str) -> float:
    """Largest error of a few output tensors against 0.5 * a + 0.5 * b."""
    from kohaku.sdxl.tensors import TensorFile

    files = [TensorFile(p) for p in (a, b, out)]
    names = sorted(files[2].header.specs)[:: max(1, len(files[2].header.specs) // 7)]
    worst = 0.0
    for name in names:
        x, y, z = (f.get(name).float() for f in files)
        worst = max(worst, ((0.5 * x + 0.5 * y) - z).abs().max().item())
    for f in files:
        f.close()
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["full", "half"], default="full")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "fp8"], default="fp16")
    parser.add_argument("--warm", action="store_true", help="leave inputs in the page cache")
    parser.add_argument(
        "--reader",
        choices=["plain", "mmap"],
        default="plain",
        help="mmap: read through safetensors' safe_open, for comparison",
    )
    parser.add_argument("--keep", action="store_true", help="keep the files in bench/out/merge")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *rest = args.child
        if mode == "gen":
            print(json.dumps(generate(Path(rest[0]), rest[1], int(rest[2]))))
        else:
            paths = [Path(p) for p in rest[:3]]
            print(json.dumps(merge_child(*paths, dtype=rest[3], reader=rest[4])))
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    a, b = OUT / f"a-{args.size}.safetensors", OUT / f"b-{args.size}.safetensors"
    out = OUT / f"merged-{args.size}-{args.dtype}.safetensors"
    report: dict = {
        "size": args.size,
        "dtype": args.dtype,
        "cold": not args.warm,
        "reader": args.reader,
        "load_average_1min_before": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    try:
        for path, seed in ((a, 1), (b, 2)):
            if not path.exists():
                report[f"generate_{path.stem}"] = child("gen", str(path), args.size, str(seed))
            if not args.warm:
                evict(path)
        report["merge"] = child("merge", str(a), str(b), str(out), args.dtype, args.reader)
        report["max_abs_error_sampled"] = check(a, b, out, args.dtype)
        report["input_gb"] = a.stat().st_size / 1e9
    finally:
        if not args.keep:
            for p in (a, b, out):
                p.unlink(missing_ok=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
