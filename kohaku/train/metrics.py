"""The trainer's metric lines (rank 0): one JSON object per logged step.

Writes each line to `<run>/train/metrics.jsonl`, to TensorBoard event files in
`<run>/train/tensorboard/` (`train/loss`, `train/lr_unet`, `train/lr_text`,
`train/images_per_s`; `val/loss` and `val/loss_ema` on the steps that measured them) and
to stdout after `kohaku-train ` (`kohaku.train.launch.parse_metrics` reads it back).

Resume: `start(step)` drops what a stopped or killed process logged after the checkpoint
the run resumes from (the steps are trained again): the lines of later steps leave
metrics.jsonl (rewritten atomically) and TensorBoard purges its events from `step + 1` on.
"""

from __future__ import annotations

import json
from pathlib import Path

from kohaku.stage import atomic_write_text

TRAIN_KEYS = ("loss", "lr_unet", "lr_text", "images_per_s")
VALIDATION_TAGS = {"val_loss": "val/loss", "val_loss_ema": "val/loss_ema"}


class MetricLog:
    """Appends metric lines; TensorBoard's writer opens on the first line."""

    def __init__(self, out: Path) -> None:
        self.out, self.writer, self.purge_step = Path(out), None, None

    def start(self, step: int) -> int:
        """Training (re)starts after `step`: forget every later line; returns how many."""
        self.purge_step = step + 1
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return 0
        lines = path.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
        if len(kept) == len(lines):
            return 0
        atomic_write_text(path, "".join(kept))
        return len(lines) - len(kept)

    def write(self, line: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        self._tensorboard(line)
        print(f"kohaku-train {json.dumps(line)}", flush=True)

    def _tensorboard(self, line: dict) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.purge_step)
        for key in TRAIN_KEYS:
            if line[key] is not None:
                self.writer.add_scalar(f"train/{key}", line[key], line["step"])
        for key, tag in VALIDATION_TAGS.items():
            if key in line:
                self.writer.add_scalar(tag, line[key], line["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
