"""The trainer's process entry: `python -m kohaku.train.process --config train.json --run-dir R`
(one process), or the same under `torchrun --nproc_per_node N` (data parallel).

Reads the train config (JSON of `TrainConfig`) and the run dir; writes what
`kohaku.train.loop` writes. Exit codes: 0 done, 75 stopped by SIGTERM after a checkpoint
(run again to resume), 2 a bad config or input (the message says what to fix).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kohaku.errors import ConfigError
from kohaku.logs import library_logs
from kohaku.train.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    with library_logs(args.run_dir / "logs" / "train.log"):  # LyCORIS' INFO lines and the like
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    # here, not at the top: its imports log (after the routing above), and every loader
    # worker imports the main module (this one) again and must not pay for diffusers
    from kohaku.train.loop import STOPPED, Trainer, init_dist

    cfg = TrainConfig.model_validate(json.loads(args.config.read_text()))
    d = init_dist()
    if d.world != cfg.dist.world_size:
        raise ConfigError(f"the config asks for {cfg.dist.world_size} processes but {d.world} "
                          "were started")  # fmt: skip
    try:
        result = Trainer(cfg, args.run_dir, d).train()
    finally:
        if d.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return STOPPED if result["status"] == "stopped" else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"kohaku-train: error: {exc}", file=sys.stderr)
        sys.exit(2)
