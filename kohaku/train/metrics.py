"""The trainer's metric lines (rank 0): one JSON object per logged step.

Writes each line to `<run>/train/metrics.jsonl`, to TensorBoard event files in
`<run>/train/tensorboard/` (`train/loss`, `train/lr_unet`, `train/lr_text`,
`train/images_per_s`; `val/loss` and `val/loss_ema` on the steps that measured them) and
to stdout after `kohaku-train ` (`kohaku.train.launch.parse_metrics` reads it back).
"""

from __future__ import annotations

import json
from pathlib import Path

TRAIN_KEYS = ("loss", "lr_unet", "lr_text", "images_per_s")
VALIDATION_TAGS = {"val_loss": "val/loss", "val_loss_ema": "val/loss_ema"}


class MetricLog:
    """Appends metric lines; TensorBoard's writer opens on the first line."""

    def __init__(self, out: Path) -> None:
        self.out, self.writer = Path(out), None

    def write(self, line: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        self._tensorboard(line)
        print(f"kohaku-train {json.dumps(line)}", flush=True)

    def _tensorboard(self, line: dict) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
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
