"""Benchmark: the GPU memory of one full-size training step, by component, computed without a GPU.

    python bench/memory_table.py                      # batch 4, 1024x1024, bf16, TEs trained
    python bench/memory_table.py --batch 1 --resolution 512 --precision fp16

Every tensor lives in torch's FakeTensorMode (shapes and dtypes, no storage) while a
dispatch mode follows each storage from the op that creates it until it is freed (weak
references, as torch's own MemTracker does; that tracker needs every parameter to take a
gradient, so it cannot follow a frozen base) and keeps the peak beyond the weights. The step is the
trainer's: SDXL 1.0 (UNet, both text encoders, VAE) with the frozen weights in the training
precision, the LoKr of the preset (`delta`) attached by `kohaku.sdxl.lokr.attach` in
float32, autocast, a caption of `--chunks` x 77 tokens through both text encoders with
gradients, the UNet forward and backward with and without gradient checkpointing, and the
VAE encode of the batch under no_grad in its own precision. Optimizer state is counted from
the parameter count (bitsandbytes does not run on fake tensors): Lion 8-bit keeps one uint8
state per parameter plus a float32 absmax per 256-value block, AdamW two float32 states.

The kernels are the CPU's (flash attention for CPU saves the same q, k, v, output and
log-sum-exp as flash attention on CUDA); cuDNN workspaces, NCCL buffers, the CUDA context
(~0.5 GB) and allocator fragmentation are not in these figures. They are computed, not
measured: `bench/gpu_check.sh` measures the same step on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import default_dtype, full_sdxl  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from kohaku.sdxl import lokr  # noqa: E402
from kohaku.sdxl.configs import SDXL_VAE  # noqa: E402
from kohaku.sdxl.model import checkpoint_activations  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GB = 1e9


def fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(allow_non_fake_inputs=True)


class LiveBytes(TorchDispatchMode):
    """The bytes of tensor storages alive at each op's end: new storages are counted from
    their first appearance until freed (a weak reference per storage, as torch's own
    MemTracker does); views share their base's storage and add nothing."""

    def __init__(self, existing: list[torch.Tensor]):
        super().__init__()
        self.live = self.peak = 0
        self.seen = WeakIdKeyDictionary()
        for t in existing:  # weights: not part of what the step allocates
            self.seen[t.untyped_storage()] = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        if storage in self.seen:
            return
        n = storage.nbytes()
        self.seen[storage] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, n)

    def _free(self, n: int) -> None:
        self.live -= n


def tracked(fn, modules: list[torch.nn.Module]) -> float:
    """Peak GB allocated by `fn` beyond the modules' weights (activations, gradients,
    temporaries)."""
    existing = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    mode = LiveBytes(existing)
    with mode:
        fn()
    return mode.peak / GB


def attach(parts, preset: str) -> lokr.Adapters:
    """As `Trainer._model`: everything frozen, the LoKr attached (its parameters float32)."""
    for m in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        m.requires_grad_(False)
    models = {"unet": parts.unet, "text_encoder": parts.text_encoder,
              "text_encoder_2": parts.text_encoder_2}  # fmt: skip
    adapters = lokr.attach(lokr.load_preset(preset), models, 0)
    dtypes = {p.dtype for c in adapters.networks for p in adapters.parameters(c)}
    assert dtypes == {torch.float32}, f"LoKr parameters in {dtypes}"
    return adapters


def weights_gb(parts, adapters) -> dict[str, float]:
    """Frozen weights by component (their dtype) and the LoKr parameters (float32)."""
    out = {}
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        params = getattr(parts, name).parameters()
        out[f"frozen {name}"] = sum(p.numel() * p.element_size() for p in params
                                    if not p.requires_grad) / GB  # fmt: skip
    n = sum(p.numel() for c in adapters.networks for p in adapters.parameters(c))
    out["lokr params"] = n
    out["lokr weights (fp32)"] = n * 4 / GB
    out["lokr gradients (fp32)"] = n * 4 / GB
    out["optimizer lion8bit"] = n * (1 + 4 / 256) / GB
    out["optimizer adamw (fp32)"] = n * 8 / GB
    return out


def step_fn(parts, args, amp: torch.dtype | None):
    """Forward + backward of one micro-batch (as `loop.Denoiser.forward`, latents given)."""
    b, n = args.batch, args.resolution // 8

    def run() -> None:
        ids = torch.randint(0, 49407, (b * args.chunks, 77))
        with torch.autocast("cpu", dtype=amp) if amp else nullcontext():
            out1 = parts.text_encoder(ids, output_hidden_states=True)
            out2 = parts.text_encoder_2(ids, output_hidden_states=True)
            hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
            hidden = hidden.reshape(b, args.chunks * 77, -1)
            pooled = out2.text_embeds.reshape(b, args.chunks, -1)[:, 0]
            latents = torch.randn(b, 4, n, n)
            t = torch.randint(0, 1000, (b,))
            time_ids = torch.randn(b, 6)
            pred = parts.unet(latents, t, hidden, added_cond_kwargs={
                "text_embeds": pooled, "time_ids": time_ids}).sample  # fmt: skip
            loss = (pred.float() - latents.float()).pow(2).mean()
        loss.backward()

    return run


def vae_fn(parts, args):
    def run() -> None:
        with torch.no_grad():
            x = torch.randn(args.batch, 3, args.resolution, args.resolution,
                            dtype=parts.vae.dtype)  # fmt: skip
            parts.vae.encode(x).latent_dist.mean.sum()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--vae-precision", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--chunks", type=int, default=3, help="caption chunks of 77 tokens")
    ap.add_argument("--preset", default="delta")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    amp = None if args.precision == "fp32" else DTYPES[args.precision]
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    start = time.perf_counter()
    torch.__future__.set_overwrite_module_params_on_conversion(True)  # fakes cannot be swapped
    with fake_mode():
        parts = full_sdxl(torch.device("cpu"), DTYPES[args.precision])
        with default_dtype(DTYPES[args.vae_precision]):  # fake tensors cannot be cast
            parts.vae = AutoencoderKL.from_config(SDXL_VAE).eval()
        adapters = attach(parts, args.preset)
        result["weights_gb"] = weights_gb(parts, adapters)
        models = [parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2,
                  *adapters.networks.values()]  # fmt: skip
        result["vae_encode_gb"] = tracked(vae_fn(parts, args), models)
        result["step_no_ckpt_gb"] = tracked(step_fn(parts, args, amp), models)
        checkpoint_activations(parts, text_encoders=True)  # as the trainer does
        result["step_ckpt_gb"] = tracked(step_fn(parts, args, amp), models)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
