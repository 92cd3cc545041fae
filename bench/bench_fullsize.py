"""Benchmark: the train, export and evaluate commands on a full-size SDXL, on this CPU.

    python bench/bench_fullsize.py                       # Lion 8-bit and AdamW, 3 steps each
    python bench/bench_fullsize.py --optimizers lion8bit --steps 2 --px 128
    python bench/bench_fullsize.py --model my-sdxl.safetensors --skip export

What a user with one SDXL `.safetensors` file runs, as they run it:
1. a random-weight SDXL 1.0 single file in the official layout (2,515 tensors, 6.94 GB in
   fp16), written once by the streamed generator `bench/sdxl_file.py` (or `--model`);
2. the demo's data stages (`kohaku build-dataset`, `download` from the demo's local image
   server, `buckets`) with buckets of about `--px` x `--px`, once;
3. `kohaku train` with a config holding only `[train]`: bf16, gradient checkpointing, the
   `delta` preset with both text encoders trained, batch 1, `--steps` optimizer steps, once
   per optimizer;
4. `kohaku export` (the base with the trained LoKr merged, fp16 single file);
5. `kohaku evaluate` (one 256 px picture of the final LoKr, bf16 on the CPU).
Each command runs as a child process; its peak RSS is the largest resident size of it and
every process it started (`wait4`'s rusage: the trainer runs as a grandchild). Printed per
command: wall seconds, peak RSS; for training also the model load time (to the trainer's
`model loaded` line), seconds per step (between metric lines, the first step left out)
and the LoKr's parameter count and file size. Files go to `bench/out/fullsize/`
(git-ignored). Never run two full-size benchmarks at once: each needs up to ~10 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "fullsize"
KOHAKU = [str(Path(sys.executable).parent / "kohaku")]  # the console script a user runs


def run(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run `cmd`, its output to `log` with arrival times; wall seconds and peak RSS."""
    start = time.perf_counter()
    lines = []
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                                cwd=HERE.parent)  # fmt: skip
        for line in proc.stdout:
            t = time.perf_counter() - start
            lines.append((t, line.rstrip("\n")))
            f.write(f"{t:9.2f} {line}")
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = "\n".join(line for _, line in lines[-30:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}); log {log}:\n{tail}")
    return {"seconds": round(time.perf_counter() - start, 1),
            # ru_maxrss is in KiB: GiB exactly, and KiB / 1e6 (what this benchmark printed
            # as "GB" before December 2026; a decimal GB is 1.024 times that)
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "peak_rss_kib_1e6": round(usage.ru_maxrss / 1e6, 2), "lines": lines}  # fmt: skip


def ensure_model(path: Path) -> dict | None:
    if path.is_file():
        return None
    sys.path.insert(0, str(HERE))
    from sdxl_file import write_sdxl_file

    figures = write_sdxl_file(path, "fp16")
    print(f"wrote {path}: {json.dumps(figures)}", flush=True)
    return figures


def ensure_data(root: Path, px: int, posts: int) -> Path:
    """The demo's data stages with buckets of about px x px; returns the run dir."""
    from kohaku.demo.images import ImageServer
    from kohaku.demo.run import DEMO_URL_KEY, prepare_demo

    run_dir = root / "run"
    if (run_dir / "buckets" / "manifest.json").is_file():
        return run_dir
    config = prepare_demo(root, posts=posts)
    sets = ["--set", f"download.buckets.area={px * px}", "--set",
            f"download.buckets.max_side={2 * px}"]  # fmt: skip
    run([*KOHAKU, "build-dataset", "-c", str(config), *sets], root / "build-dataset.log")
    with ImageServer(root / "metadata" / "danbooru.db") as server:
        run([*KOHAKU, "download", "-c", str(config), *sets, "--set",
             f"{DEMO_URL_KEY}={server.url_template}"], root / "download.log")  # fmt: skip
    run([*KOHAKU, "buckets", "-c", str(config), *sets], root / "buckets.log")
    return run_dir


TRAIN_TOML = """run_dir = "{run_dir}"

[train]
precision = "bf16"
gradient_checkpointing = true
batch_size = 1
max_steps = {steps}
log_every = 1
checkpoint_every = 1000
seed = 0

[train.model]
path = "{model}"

[train.adapter]
preset = "delta"
train_text_encoders = true

[train.optim]
kind = "{optimizer}"
warmup_steps = 1
"""

EVALUATE_TOML = """run_dir = "{run_dir}"

[evaluate]
characters = 1
styles = 0
quality_probes = false
character_references = 0
seeds = [0]
steps = {steps}
width = 256
height = 256
batch_size = 1
checkpoints = "final"
precision = "bf16"
grid_prompts = 1
"""


def train(args: argparse.Namespace, run_dir: Path, optimizer: str) -> dict:
    config = OUT / f"train-{optimizer}.toml"
    config.write_text(TRAIN_TOML.format(run_dir=run_dir, steps=args.steps, model=args.model,
                                        optimizer=optimizer))  # fmt: skip
    res = run([*KOHAKU, "train", "-c", str(config)], OUT / f"train-{optimizer}.log")
    lines = res.pop("lines")
    steps = [t for t, line in lines if line.startswith("kohaku-train {")]
    loaded = next((t for t, line in lines if "model loaded" in line), None)
    res["load_seconds"] = round(loaded, 1) if loaded is not None else None
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    res["s_per_step"] = round(sum(gaps) / len(gaps), 1) if gaps else None
    res["first_step_seconds"] = round(steps[0] - (loaded or 0), 1) if steps else None
    res |= lokr_figures(run_dir / "train" / "lokr.safetensors")
    return res


def lokr_figures(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = f.keys()  # safe_open is not iterable
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in names
                     if not k.endswith(".alpha"))  # fmt: skip
        meta = f.metadata() or {}
    return {"lokr_params": params, "lokr_file_mb": round(path.stat().st_size / 1e6, 1),
            "lokr_base_model_version": meta.get("ss_base_model_version")}  # fmt: skip


def export(args: argparse.Namespace, run_dir: Path) -> dict:
    out = OUT / "merged-fp16.safetensors"
    res = run([*KOHAKU, "export", "--base", str(args.model), "--lokr",
               str(run_dir / "train" / "lokr.safetensors"), "--out", str(out), "--storage",
               "fp16"], OUT / "export.log")  # fmt: skip
    res.pop("lines")
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        res["tensors"] = len(list(f.keys()))
    res["file_gb"] = round(out.stat().st_size / 1e9, 2)
    if not args.keep:
        out.unlink()
    return res


def evaluate(args: argparse.Namespace, run_dir: Path) -> dict:
    config = OUT / "evaluate.toml"
    config.write_text(EVALUATE_TOML.format(run_dir=run_dir, steps=args.eval_steps))
    res = run([*KOHAKU, "evaluate", "-c", str(config)], OUT / "evaluate.log")
    res.pop("lines")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=OUT / "sdxl-fp16.safetensors")
    ap.add_argument("--optimizers", nargs="+", default=["lion8bit", "adamw"])
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per training run")
    ap.add_argument("--px", type=int, default=128, help="bucket side (area px*px)")
    ap.add_argument("--posts", type=int, default=300, help="demo database posts")
    ap.add_argument("--eval-steps", type=int, default=4, help="sampling steps of the picture")
    ap.add_argument("--skip", nargs="*", default=[], choices=["train", "export", "evaluate"])
    ap.add_argument("--keep", action="store_true", help="keep the merged export")
    ap.add_argument("--json", type=Path, default=OUT / "result.json")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": str(args.model), "generated": ensure_model(args.model)}
    run_dir = ensure_data(OUT / "data", args.px, args.posts)
    for optimizer in args.optimizers if "train" not in args.skip else []:
        result[f"train_{optimizer}"] = train(args, run_dir, optimizer)
        print(f"train ({optimizer}): {json.dumps(result[f'train_{optimizer}'])}", flush=True)
    for name, fn in (("export", export), ("evaluate", evaluate)):
        if name not in args.skip:
            result[name] = fn(args, run_dir)
            print(f"{name}: {json.dumps(result[name])}", flush=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"figures in {args.json}")


if __name__ == "__main__":
    main()
