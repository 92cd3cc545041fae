"""The model commands: `train`, `evaluate`, `merge` and `export`, in this process and its
children, without Prefect. `train` and `evaluate` run their stage on the run config
(`[train]` / `[evaluate]` is all they need) and stream the trainer's lines; `merge` runs a
merge recipe (as `python -m kohaku.merge`); `export` folds a LoKr into its base model.
torch (and diffusers: seconds to import) is imported only once the config is read and
the named files are found, so that a typo fails at once.
Reads: the run dir's stages, the models; writes `<run>/train/`, `<run>/evaluate/`, the
merged model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kohaku.cli.common import config_args, load, report
from kohaku.config import stage_section
from kohaku.errors import InputError

STOPPED = 75  # EX_TEMPFAIL: the trainer stopped on SIGTERM; run the command again to resume


def cmd_train(args: argparse.Namespace) -> None:
    config = load(args, "train")
    cfg = stage_section(config, "train")
    must_exist(cfg.model.path, "model path")
    if cfg.model.lokr is not None:
        must_exist(cfg.model.lokr, "model.lokr")
    from kohaku.train.run import TrainingStopped, run_train

    try:
        manifest = run_train(cfg, config.run_dir, on_line=lambda line: print(line, flush=True))
    except TrainingStopped as exc:
        print(f"kohaku: {exc}", file=sys.stderr)
        raise SystemExit(STOPPED) from None
    report(manifest, config.run_dir / "train")


def cmd_evaluate(args: argparse.Namespace) -> None:
    config = load(args, "evaluate")
    cfg = stage_section(config, "evaluate")
    from kohaku.logs import library_logs

    def progress(label: str, done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            print(f"evaluate {label}: {done}/{total} pictures", flush=True)

    # LyCORIS' INFO lines and the like to the log file, as in the evaluate task; the import
    # inside too: importing the pipeline has transformers print its torchvision notices
    with library_logs(Path(config.run_dir) / "logs" / "evaluate.log"):
        from kohaku.evaluate.run import run_evaluate

        manifest = run_evaluate(cfg, config.run_dir, progress)
    report(manifest, config.run_dir / "evaluate")


def cmd_merge(args: argparse.Namespace) -> None:
    from kohaku.merge import load_recipe, merge

    result = merge(load_recipe(args.recipe))
    print(f"{result.output}: {result.tensors} tensors, {result.bytes / 1e9:.2f} GB, "
          f"{result.seconds:.1f} s")  # fmt: skip


def cmd_export(args: argparse.Namespace) -> None:
    must_exist(args.base, "model path")
    must_exist(args.lokr, "LoKr file")
    if args.base_lokr is not None:
        must_exist(args.base_lokr, "base LoKr file")
    from kohaku.sdxl.model import check_model
    from kohaku.train.config import ModelConfig
    from kohaku.train.export import export_merged

    source = check_model(ModelConfig(path=args.base, config_dir=args.config_dir,
                                     allow_pickle=args.allow_pickle, lokr=args.base_lokr,
                                     lokr_weight=args.base_lokr_weight))  # fmt: skip
    out = export_merged(source, args.lokr, args.out, args.format, args.storage)
    first = f"{args.base_lokr} then " if args.base_lokr else ""
    print(f"merged {first}{args.lokr} into {args.base}: {out} ({args.format}, {args.storage})")


def must_exist(path: Path, what: str) -> None:
    """The check the stage makes too (same words), before the imports that take seconds."""
    if not Path(path).exists():
        raise InputError(f"{what} {path} does not exist")


def add_commands(sub) -> None:
    for name, func, text in (
        ("train", cmd_train, "train (or resume) the run's LoKr; needs only [train]"),
        ("evaluate", cmd_evaluate, "sample grids and scores of the run's checkpoints"),
    ):
        p = sub.add_parser(name, help=text)
        config_args(p)
        p.set_defaults(func=func)
    p = sub.add_parser("merge", help="weighted model arithmetic from a recipe TOML, streamed")
    p.add_argument("recipe", type=Path, help="merge recipe TOML")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("export", help="a merged model: a LoKr folded into its base SDXL")
    p.add_argument("--base", type=Path, required=True, help="the base SDXL: file or folder")
    p.add_argument("--lokr", type=Path, required=True, help="the LoKr .safetensors")
    p.add_argument("--base-lokr", type=Path,
                   help="the LoKr the one above was trained on top of (train.model.lokr), "
                   "merged first")  # fmt: skip
    p.add_argument("--base-lokr-weight", type=float, default=1.0,
                   help="its multiplier (train.model.lokr_weight)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="the merged file or folder")
    p.add_argument("--storage", choices=("fp32", "fp16", "bf16", "fp8"), default="fp16",
                   help="weight storage (fp8 = e4m3fn)")  # fmt: skip
    p.add_argument("--format", choices=("single_file", "diffusers"), default="single_file")
    p.add_argument("--config-dir", type=Path,
                   help="a diffusers folder with configs for a single-file base")  # fmt: skip
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.bin weights")
    p.set_defaults(func=cmd_export)
