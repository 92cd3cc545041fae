"""An exponential moving average (EMA) of the LoKr weights, beside the trained ones.

Reads and writes no file itself: the trainer saves `state()` in each checkpoint
(`<run>/train/checkpoints/step-NNNNNN/ema.safetensors`, the names and tensors of
`adapter.safetensors` with the averaged parameters in place of the trained ones), loads it
back on resume, and exports the average through `swapped_in` as
`<run>/train/lokr-ema.safetensors`.

The average covers the LoKr's trainable parameters only (the frozen base never moves) and
is kept in float32, on the training device or in CPU memory (`train.ema.device`). After
optimizer step s (counted from 1) and before any later step:

    s <= start_step:  ema = weights                    (a copy: nothing averaged yet)
    else:             ema = d * ema + (1 - d) * weights,   n = s - start_step - 1
                      d = min(decay, (1 + n) / (10 + n))  with warmup, else decay

The warmup is the one of TensorFlow's `tf.train.ExponentialMovingAverage` (its
`num_updates`) and of diffusers' `EMAModel` without `use_ema_warmup`: the first updates
weigh the new weights heavily (d = 0.1, 0.18, ...), so a 0.9999 average is not held for
thousands of steps near the untrained start (a LoKr starts as no change at all). The decay
depends only on the step, never on a counter of its own: a resumed run, which restores the
average and the step, continues bit for bit. With data parallelism every rank holds the same
weights after each step, so every rank's average is the same; rank 0 saves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from kohaku.train import EMA_LOKR, META_EMA  # noqa: F401  (defined there: evaluate reads them)
from kohaku.train.config import EmaConfig


def ema_decay(cfg: EmaConfig, step: int) -> float:
    """The decay applied after optimizer step `step` (1-based); 0 while it only copies."""
    assert cfg.decay is not None
    n = step - cfg.start_step - 1
    if n < 0:
        return 0.0
    return min(cfg.decay, (1 + n) / (10 + n)) if cfg.warmup else cfg.decay


class EMA:
    """The average of `params` (training names `<component>.<lycoris key>` -> parameter),
    in float32 on `device`; it starts as a copy of the weights."""

    def __init__(self, params: dict[str, torch.nn.Parameter], cfg: EmaConfig,
                 device: torch.device) -> None:  # fmt: skip
        self.cfg, self.params = cfg, params
        self.device = torch.device("cpu") if cfg.device == "cpu" else device
        self.shadow = {k: p.detach().to(self.device, torch.float32, copy=True)
                       for k, p in params.items()}  # fmt: skip

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the weights after optimizer step `step` into the average."""
        weights = [p.detach().to(self.device, torch.float32) for p in self.params.values()]
        shadow = list(self.shadow.values())
        decay = ema_decay(self.cfg, step)
        if decay == 0.0:
            torch._foreach_copy_(shadow, weights)
        else:  # ema + (1 - d) (w - ema) = d ema + (1 - d) w
            torch._foreach_lerp_(shadow, weights, 1.0 - decay)

    def state(self, adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`adapter` (the trainer's full LoKr state) with the averaged parameters in place:
        a file that loads wherever `adapter.safetensors` loads."""
        missing = self.shadow.keys() - adapter.keys()
        if missing:
            raise KeyError(f"the LoKr state lacks averaged tensors {sorted(missing)[:3]}")
        return {**adapter, **self.shadow}

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the average from a checkpoint's `state()`."""
        missing = sorted(self.shadow.keys() - state.keys())
        if missing:
            raise ValueError(f"the checkpoint's EMA lacks {len(missing)} LoKr tensors, e.g. "
                             f"{missing[:3]}")  # fmt: skip
        for key, value in self.shadow.items():
            value.copy_(state[key])

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the LoKr parameters for the duration (to export or
        evaluate them), the trained ones restored afterwards, bit for bit."""
        with torch.no_grad():
            kept = {k: p.detach().clone() for k, p in self.params.items()}
            for key, p in self.params.items():
                p.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, p in self.params.items():
                    p.copy_(kept[key])


def trainable(networks: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """The LoKr parameters that train, under the trainer's names (`<component>.<key>`,
    as in `adapter.safetensors`)."""
    return {f"{c}.{name}": p for c, net in networks.items()
            for name, p in net.named_parameters() if p.requires_grad}  # fmt: skip
