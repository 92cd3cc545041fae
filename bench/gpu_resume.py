"""Benchmark check: a training run killed with SIGKILL and resumed from its checkpoint ends
with the same LoKr weights as a run never interrupted (on the GPU, at full size).

    python3 bench/gpu_resume.py --device cuda              # full SDXL, batch 4, 1024 px
    python bench/gpu_resume.py --device cpu                # the tiny model: a dry run here

The steps are `bench_train.py`'s (the trainer's `train_step` without the data loader, which
needs polars, absent on the lent GPU machine); checkpoints are the trainer's own
(`kohaku.train.checkpoint`: LoKr weights, optimizer state, grad scaler, every RNG). Each run
is a child process: A trains `--steps` steps; B trains with a checkpoint every
`--checkpoint-every` steps and kills itself with SIGKILL after step `--kill-after`; B' resumes
B from its newest checkpoint to the end; C repeats A (the noise floor of the GPU's own
nondeterminism). Printed: the largest absolute difference of any LoKr value between A and
B' and between A and C. CUDA runs with `torch.use_deterministic_algorithms(True)`, so both
are expected to be 0. Files go to `--out` (default bench/out/gpu-resume).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    """One run: resume from the newest checkpoint under --ckpt, train to --steps, save."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    sys.path.insert(0, str(HERE))
    import bench_train as bt

    from kohaku.train import checkpoint as ckpt

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device(args.device)
    full = device.type == "cuda"
    ns = argparse.Namespace(
        precision="bf16" if full else "fp32", base_fp32=False, preset="delta", no_te=False,
        seed=args.seed, bypass=True, grad_ckpt=full, optimizer=args.optimizer,
        batch=args.batch, resolution=args.resolution or (1024 if full else 64),
        max_tokens=225 if full else 75,
    )  # fmt: skip
    run = bt.build_run(ns, device)
    state = lambda: {f"{c}.{k}": v for c, net in run.adapters.networks.items()  # noqa: E731
                     for k, v in net.state_dict().items()}  # fmt: skip
    step, root = 0, Path(args.ckpt)
    newest = ckpt.latest(root)
    if newest is not None:
        saved = ckpt.load(newest, 0)
        for c, net in run.adapters.networks.items():
            net.load_state_dict({k.split(".", 1)[1]: v for k, v in saved.adapter.items()
                                 if k.split(".", 1)[0] == c})  # fmt: skip
        run.optimizer.load_state_dict(saved.optimizer)
        if saved.scaler:
            run.scaler.load_state_dict(saved.scaler)
        step = saved.position.step
        print(f"resumed at step {step} from {newest.name}", flush=True)
    while step < args.steps:
        loss = run.step(step, latents_given=False)
        step += 1
        print(f"step {step} loss {loss:.6f}", flush=True)
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            scaler = run.scaler.state_dict() or None
            saved = ckpt.TrainState(state(), run.optimizer.state_dict(), {}, scaler,
                                    ckpt.Position(step, 0, 0))  # fmt: skip
            ckpt.save(root, saved, 0, 1, lambda: None)
        if args.kill_after and step == args.kill_after:
            print(f"SIGKILL after step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in state().items()}, args.result)


def spawn(args: argparse.Namespace, name: str, **extra) -> int:
    out, base = Path(args.out), name.rstrip("'")  # B' resumes B's checkpoints
    cmd = [sys.executable, __file__, "--child", "--device", args.device, "--steps",
           str(args.steps), "--batch", str(args.batch), "--optimizer", args.optimizer,
           "--seed", str(args.seed), "--ckpt", str(out / f"ckpt-{base}"),
           "--result", str(out / f"{base}.safetensors")]  # fmt: skip
    if args.resolution:
        cmd += ["--resolution", str(args.resolution)]
    for key, value in ({"checkpoint_every": 0, "kill_after": 0} | extra).items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    print(f"run {name}: {' '.join(cmd[2:])}", flush=True)
    return subprocess.call(cmd)


def max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys(), "different LoKr tensors"
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--checkpoint-every", type=int, default=2)
    ap.add_argument("--kill-after", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=None, help="cuda 1024, cpu 64")
    ap.add_argument("--optimizer", choices=["lion8bit", "adamw"], default="lion8bit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "out" / "gpu-resume"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    codes = {"A": spawn(args, "A"),
             "B": spawn(args, "B", checkpoint_every=args.checkpoint_every,
                        kill_after=args.kill_after)}  # fmt: skip
    codes["B'"] = spawn(args, "B'", checkpoint_every=args.checkpoint_every)
    codes["C"] = spawn(args, "C")
    killed = codes["B"] == -signal.SIGKILL
    a = out / "A.safetensors"
    result = {"codes": codes, "killed": killed,
              "resumed_vs_uninterrupted": max_diff(a, out / "B.safetensors"),
              "repeat_vs_uninterrupted": max_diff(a, out / "C.safetensors")}  # fmt: skip
    print("result " + json.dumps(result), flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
