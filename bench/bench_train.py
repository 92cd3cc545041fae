"""Benchmark: LoKr training throughput on SDXL (images/s, s/step, peak GPU memory, MFU).

    python bench/bench_train.py                          # CPU: tiny SDXL at 64 px + LoKr size
    python bench/bench_train.py --device cuda --batch 4 --grad-ckpt   # full SDXL, 1024 px, bf16
    python bench/bench_train.py --device meta            # full SDXL on meta: FLOPs of one step

The step is `kohaku.train.loop.Trainer.train_step` with its data loading left out: per-sample
generators and draws, VAE encode (or latents given, as from a latent cache), both text
encoders, `objective.sample_losses` (epsilon, min-SNR 5), GradScaler, grad-norm clip 1.0 and
the optimizer (Lion8bit by default, the train config's default) on the LoKr of the preset
(`delta` by default) attached with `kohaku.sdxl.lokr.attach`, as the Trainer attaches it.

- cuda: SDXL 1.0's UNet, VAE, CLIP-L and OpenCLIP-bigG shapes with random weights, built
  directly on the GPU in the base dtype (the precision's by default; `--base-fp32` keeps
  them in float32 as `load_sdxl` does for the Trainer); LoKr parameters in float32;
  autocast to the precision. MFU uses the issue's 20.2 TFLOP per image (the plain UNet's
  forward + backward at 1024 px, so it scales with resolution squared) against
  `--peak-tflops` (989 for H100/H200 bf16 dense).
- cpu: the tiny model of `kohaku.sdxl.tiny` (64 px, fp32): ms/step and images/s only.
- meta: builds the full-size models on the meta device, runs one step's forward and
  backward under torch's FlopCounterMode (no timing, no optimizer step): a logic check of
  the full-size path that needs no GPU, and the FLOPs the step really executes (lycoris'
  default weight-rebuild forward runs each adapted layer twice: W x + (dW) x).
Every mode prints the full-size LoKr's parameter count and fp16 file size (meta device).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import lycoris  # noqa: E402, F401  (its import sets its logger to INFO: one line per class)
import torch

logging.getLogger("LyCORIS").setLevel(logging.WARNING)

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from kohaku.sdxl import lokr  # noqa: E402
from kohaku.sdxl.configs import SDXL_UNET, SDXL_VAE  # noqa: E402
from kohaku.sdxl.model import SDXLParts, checkpoint_activations  # noqa: E402
from kohaku.sdxl.tiny import (  # noqa: E402
    SCHEDULER_CONFIG,
    tiny_sdxl_components,
)
from kohaku.sdxl.tokenizers import (  # noqa: E402
    sdxl_tokenizers,
)
from kohaku.train import objective  # noqa: E402
from kohaku.train.config import LossConfig, OptimConfig  # noqa: E402

UNET_TFLOP_1024 = 20.2  # the figure: plain SDXL UNet forward + backward, 1024 px
# bf16/fp16 dense TFLOP/s by device name, first match wins (SXM H100 and H200: 989)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0}
CAPTION = ("1girl, solo, long hair, looking at viewer, smile, blue eyes, blonde hair, dress, "
           "holding, standing, outdoors, sky, day, cloud, white dress, flower, masterpiece, "
           "newest, safe, absurdres")  # fmt: skip
# an epsilon-layout caption as danbooru posts have them (~30 tags): 106 tokens with SDXL's
# CLIP tokenizer, so two 77-token chunks through both text encoders (the demo's median is
# 95 tokens, its 90th percentile 141)
LONG_CAPTION = ("1girl, hatsune miku, vocaloid, kuro (kuroi-nekoneko), long hair, twintails, "
                "aqua hair, aqua eyes, looking at viewer, smile, open mouth, detached sleeves, "
                "necktie, skirt, pleated skirt, thighhighs, zettai ryouiki, holding microphone, "
                "standing, one leg raised, outdoors, night sky, city lights, star (sky), "
                "confetti, stage lights, cowboy shot, from side, masterpiece, newest, "
                "absurdres, highres, safe")  # fmt: skip
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def clip_config(hidden: int, layers: int, heads: int, act: str) -> CLIPTextConfig:
    """SDXL's text encoder shapes with the 49408-token vocabulary; the tiny tokenizers'
    ids (all < 524) index into it and their end token marks the pooled position."""
    bos, eos = 49406, 49407  # SDXL's CLIP vocabulary (kohaku.sdxl.tokenizers)
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        hidden_act=act, projection_dim=hidden, bos_token_id=bos,
        eos_token_id=eos, pad_token_id=eos,
    )  # fmt: skip


@contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def full_sdxl(device: torch.device, dtype: torch.dtype) -> SDXLParts:
    """SDXL 1.0's shapes with random weights, created on `device` in `dtype` (no CPU copy)."""
    tokenizer, tokenizer_2 = sdxl_tokenizers()  # CLIP's own, built offline
    with torch.device(device), default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(SDXL_UNET)
        vae = AutoencoderKL.from_config(SDXL_VAE)
        te1 = CLIPTextModel(clip_config(768, 12, 12, "quick_gelu"))  # CLIP ViT-L
        te2 = CLIPTextModelWithProjection(clip_config(1280, 32, 20, "gelu"))  # OpenCLIP bigG
    return SDXLParts(unet=unet.eval(), vae=vae.eval(), text_encoder=te1.eval(),
                     text_encoder_2=te2.eval(), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                     noise_scheduler=DDPMScheduler(**SCHEDULER_CONFIG))  # fmt: skip


def adapted(parts: SDXLParts, train_te: bool) -> dict[str, torch.nn.Module]:
    models: dict[str, torch.nn.Module] = {"unet": parts.unet}
    if train_te:
        models |= {"text_encoder": parts.text_encoder, "text_encoder_2": parts.text_encoder_2}
    return models


def attach(parts: SDXLParts, preset: lokr.LokrPreset, train_te: bool, device: torch.device,
           seed: int, bypass: bool) -> lokr.Adapters:  # fmt: skip
    """As `Trainer._model`: everything frozen, LoKr attached (created on `device`, float32)."""
    for m in (parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2):
        m.requires_grad_(False)
    models = adapted(parts, train_te)
    lokr.check_preset(preset, models)
    with torch.device(device):
        adapters = lokr.attach(preset, models, seed)
    for net in adapters.networks.values():
        net.to(device, torch.float32)
        for module in net.loras:
            module.bypass_mode = bypass
    return adapters


def safetensors_header_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> int:
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, t in sorted(tensors.items()):
        size = t.numel() * 2
        header[name] = {
            "dtype": "F16",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    n = len(json.dumps(header, separators=(",", ":")))
    return 8 + n + (-n % 8)


def lokr_size(preset_name: str, train_te: bool) -> dict:
    """The preset's LoKr on full-size SDXL, counted on the meta device (nothing allocated)."""
    parts = full_sdxl(torch.device("meta"), torch.float32)
    adapters = attach(parts, lokr.load_preset(preset_name), train_te, torch.device("meta"),
                      0, False)  # fmt: skip
    base = {c: sum(p.numel() for p in m.parameters()) for c, m in adapted(parts, True).items()}
    trained = {c: sum(p.numel() for p in adapters.parameters(c)) for c in adapters.networks}
    modules = {c: len(net.loras) for c, net in adapters.networks.items()}
    tensors = lokr.state_dict(adapters)  # kohya names, as `lokr.save` writes them
    data = sum(t.numel() * 2 for t in tensors.values())
    meta = {"ss_network_module": "lycoris.kohya",
            "ss_network_args": json.dumps({"algo": "lokr", "full_matrix": True})}  # fmt: skip
    size = data + safetensors_header_bytes(tensors, meta)
    return {"preset": preset_name, "base_params": base, "lokr_params": trained,
            "lokr_params_total": sum(trained.values()), "lokr_modules": modules,
            "lokr_tensors": len(tensors), "fp16_file_bytes": size}  # fmt: skip


@dataclass
class Run:
    """Everything one benchmark step needs."""

    parts: SDXLParts
    adapters: lokr.Adapters
    device: torch.device
    amp: torch.dtype | None  # autocast dtype; None = no autocast
    train_te: bool
    batch: int
    resolution: int
    loss: LossConfig
    optimizer: torch.optim.Optimizer | None
    scaler: torch.amp.GradScaler
    seed: int = 0
    max_tokens: int = 225

    def inputs(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        b, r = self.batch, self.resolution
        size = torch.tensor([[r, r]] * b)
        ids = objective.time_ids(size, torch.zeros(b, 2, dtype=torch.long), size)
        pixels = torch.rand(b, 3, r, r, device=self.device) * 2 - 1
        caption = CAPTION if self.max_tokens == 75 else LONG_CAPTION
        return [caption] * b, ids.to(self.device), pixels

    def losses(self, step: int, latents_given: bool) -> torch.Tensor:
        """Per-sample losses of one micro-batch, as `loop.Denoiser.forward` computes them."""
        captions, ids, pixels = self.inputs()
        gens = [objective.sample_generator(self.seed, 0, step * self.batch + i)
                for i in range(self.batch)]  # fmt: skip
        shape = (self.parts.unet.config.in_channels, self.resolution // 8, self.resolution // 8)
        draws = objective.draw(gens, shape, self.loss, 1000)
        eps = draws.latent_eps.to(self.device)
        if latents_given:  # a latent cache holds the posterior's mean and std
            mean, std = torch.randn_like(eps), torch.rand_like(eps)
            latents = (mean + std * eps) * self.parts.vae.config.scaling_factor
        else:
            latents = objective.to_latents(self.parts.vae, pixels, eps)
        with nullcontext() if self.train_te else torch.no_grad():
            cond = objective.encode_prompts(self.parts, captions, ids,
                                            max_tokens=self.max_tokens)  # fmt: skip
        return objective.sample_losses(self.parts, latents, cond, draws, self.loss)

    def autocast(self):
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def step(self, step: int, latents_given: bool) -> float:
        """`Trainer.train_step` with one micro-batch (grad_accum 1, one process)."""
        with self.autocast():
            loss = self.losses(step, latents_given).mean()
            self.scaler.scale(loss).backward()
        value = loss.item()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return value


def build_optimizer(kind: str, adapters: lokr.Adapters) -> torch.optim.Optimizer:
    """As `loop.build_optimizer`, with the train config's default hyperparameters."""
    o = OptimConfig()
    groups = [{"params": adapters.parameters("unet"), "lr": o.lr_unet}]
    text = adapters.parameters("text_encoder") + adapters.parameters("text_encoder_2")
    if text:
        groups.append({"params": text, "lr": o.lr_text})
    kw = {"betas": o.betas, "weight_decay": o.weight_decay}
    if kind == "adamw":
        return torch.optim.AdamW(groups, **kw)
    import bitsandbytes as bnb

    return bnb.optim.Lion8bit(groups, **kw)


def build_run(args: argparse.Namespace, device: torch.device) -> Run:
    tiny = device.type == "cpu"
    amp = None if args.precision == "fp32" or device.type == "meta" else DTYPES[args.precision]
    if tiny:
        parts = tiny_sdxl_components(args.seed)
    else:
        base = torch.float32 if args.base_fp32 or amp is None else amp
        parts = full_sdxl(device, base)
    preset = lokr.load_preset(args.preset)
    adapters = attach(parts, preset, not args.no_te, device, args.seed, args.bypass)
    if args.grad_ckpt:  # the UNet's blocks, the trained text encoders' layers: as the trainer
        checkpoint_activations(parts, not args.no_te)
    parts.vae.to(device)
    optimizer = None if device.type == "meta" else build_optimizer(args.optimizer, adapters)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    return Run(parts, adapters, device, amp, not args.no_te, args.batch, args.resolution,
               LossConfig(), optimizer, scaler, args.seed, args.max_tokens)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(run: Run, args: argparse.Namespace, latents_given: bool) -> dict:
    device = run.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = [run.step(i, latents_given) for i in range(args.warmup)]
    sync(device)
    times = []
    start = time.perf_counter()
    for i in range(args.steps):
        t0 = time.perf_counter()
        losses.append(run.step(args.warmup + i, latents_given))  # .item() waits for the GPU
        times.append(time.perf_counter() - t0)
    sync(device)
    total = time.perf_counter() - start
    out = {
        "latents": "given" if latents_given else "vae encode",
        "s_per_step": total / args.steps,
        "median_s_per_step": statistics.median(times),
        "min_s_per_step": min(times),
        "images_per_s": args.batch * args.steps / total,
        "nonfinite_losses": sum(1 for v in losses if v != v or abs(v) == float("inf")),
    }
    if device.type == "cuda":
        out["peak_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        out["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 1e9
        peak = args.peak_tflops
        if peak:
            tflop = UNET_TFLOP_1024 * (args.resolution / 1024) ** 2
            out["mfu"] = out["images_per_s"] * tflop / peak
    return out


def count_flops(run: Run, latents_given: bool) -> dict:
    """FLOPs of one step's forward + backward, by torch's counter: all of it, the UNet (with
    its LoKr), the text encoders (with theirs) and the rest (VAE encode, loss, and some
    backward work the counter attributes to no module: the split is approximate, the total
    is not). On meta, attention runs torch's math path, whose FLOPs flash attention equals
    in the forward."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run.losses(0, latents_given).mean().backward()
    by_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    total, b = counter.get_total_flops(), run.batch
    unet = by_module.get("UNet2DConditionModel", 0)
    text = by_module.get("CLIPTextModel", 0) + by_module.get("CLIPTextModelWithProjection", 0)
    return {"latents": "given" if latents_given else "vae encode",
            "tflop_per_image": total / b / 1e12, "unet": unet / b / 1e12,
            "text_encoders": text / b / 1e12, "rest": (total - unet - text) / b / 1e12}  # fmt: skip


def plain_unet_tflop(resolution: int) -> float:
    """The issue's reference: forward + backward of the plain UNet, all weights trained."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SDXL_UNET)
    n = resolution // 8
    with torch.device("meta"):
        x, t = torch.randn(1, 4, n, n), torch.tensor([500])
        hidden, pooled, ids = torch.randn(1, 77, 2048), torch.randn(1, 1280), torch.randn(1, 6)
    counter = FlopCounterMode(display=False)
    with counter:
        out = unet(x, t, hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids})
        out.sample.float().pow(2).mean().backward()
    return counter.get_total_flops() / 1e12


def print_size(result: dict, args: argparse.Namespace) -> None:
    size = result["lokr_full_sdxl"] = lokr_size(args.preset, not args.no_te)
    per = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in size["lokr_params"].items())
    base = ", ".join(f"{k} {v / 1e9:.3f}B" for k, v in size["base_params"].items())
    print(f"LoKr '{args.preset}' on full SDXL (meta device): "
          f"{size['lokr_params_total'] / 1e6:.1f}M params ({per}), "
          f"{sum(size['lokr_modules'].values())} modules, fp16 file "
          f"{size['fp16_file_bytes'] / 1e6:.1f} MB; base params {base}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "meta"],
                    default="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    ap.add_argument("--batch", type=int, default=4, help="images per step")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (cuda 20, cpu 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--precision", choices=list(DTYPES), default=None,
                    help="autocast dtype (cuda bf16, cpu fp32)")  # fmt: skip
    ap.add_argument("--base-fp32", action="store_true",
                    help="frozen base weights in float32 (as the Trainer loads them)")  # fmt: skip
    ap.add_argument("--grad-ckpt", action="store_true", help="UNet gradient checkpointing")
    ap.add_argument("--optimizer", choices=["lion8bit", "adamw"], default="lion8bit")
    ap.add_argument("--no-te", action="store_true",
                    help="UNet LoKr only (the text encoders run frozen, no grad)")  # fmt: skip
    ap.add_argument("--resolution", type=int, default=None, help="square bucket (cuda 1024)")
    ap.add_argument("--latents", choices=["given", "vae", "both"], default="both",
                    help="from a latent cache, VAE-encoded, or both in turn")  # fmt: skip
    ap.add_argument("--preset", default="delta", help="LoKr preset (name or .toml)")
    ap.add_argument("--no-bypass", dest="bypass", action="store_false",
                    help="lycoris' weight rebuild (W x + ((W + dW) - W) x) instead of the "
                    "bypass branch (W x + dW x) that kohaku trains with")  # fmt: skip
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="accelerator's dense peak for MFU (H100/H200 bf16: 989)")  # fmt: skip
    ap.add_argument("--count-flops", action="store_true",
                    help="cuda: also count the step's executed FLOPs on meta and report the "
                    "utilisation they give")  # fmt: skip
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="caption tokens (cpu: 75 with the short caption, as the tiny "
                    "figures were measured; else 225 with a ~106-token epsilon caption: two "
                    "chunks through both text encoders)")  # fmt: skip
    ap.add_argument("--memory-fraction-gib", type=float, default=None,
                    help="cuda: cap this process's GPU memory (24 = an RTX 3090/4090) with "
                    "torch.cuda.set_per_process_memory_fraction")  # fmt: skip
    ap.add_argument("--no-size", action="store_true",
                    help="skip the full-size LoKr count on the meta device (~10 s)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (cpu: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    device = torch.device(args.device)
    gpu_like = device.type != "cpu"
    args.precision = args.precision or ("bf16" if gpu_like else "fp32")
    args.resolution = args.resolution or (1024 if gpu_like else 64)
    args.steps = args.steps or (20 if device.type == "cuda" else 30)
    args.max_tokens = args.max_tokens or (225 if gpu_like else 75)
    if device.type == "cuda" and args.memory_fraction_gib:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction_gib * 2**30 / total, device)
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda" and args.peak_tflops is None:
        name = torch.cuda.get_device_name(device)
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    result: dict = {"args": vars(args), "torch": torch.__version__,
                    "threads": torch.get_num_threads()}  # fmt: skip
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({result['gpu']})" if "gpu" in result else "")
)  # fmt: skip

    if not args.no_size:
        print_size(result, args)

    modes = {"given": [True], "vae": [False], "both": [True, False]}[args.latents]
    t0 = time.perf_counter()
    run = build_run(args, device)
    what = "tiny SDXL" if device.type == "cpu" else "full SDXL"
    print(f"built {what} + LoKr on {device} in {time.perf_counter() - t0:.1f}s; batch "
          f"{args.batch}, {args.resolution}px, "
          f"{args.precision if device.type != 'meta' else 'fp32 (FLOPs only)'}"
          f"{' (base fp32)' if args.base_fp32 else ''}, {args.optimizer}, "
          f"text encoders {'frozen' if args.no_te else 'trained'}, "
          f"grad ckpt {'on' if args.grad_ckpt else 'off'}, "
          f"lycoris {'bypass' if args.bypass else 'rebuild'}")  # fmt: skip
    if device.type == "cuda":
        print(f"before the first step (weights, LoKr): "
              f"{torch.cuda.memory_allocated(device) / 1e9:.2f} GB allocated")  # fmt: skip

    if device.type == "meta":
        result["plain_unet_tflop_per_image"] = plain_unet_tflop(args.resolution)
        print(f"plain UNet fwd+bwd (the issue's MFU basis): "
              f"{result['plain_unet_tflop_per_image']:.2f} TFLOP/image")  # fmt: skip
        result["flops"] = []
        for given in modes:
            f = count_flops(run, given)
            result["flops"].append(f)
            print(f"step with LoKr, latents {f['latents']}: {f['tflop_per_image']:.2f} "
                  f"TFLOP/image executed: UNet {f['unet']:.2f}, text encoders "
                  f"{f['text_encoders']:.2f}, rest {f['rest']:.2f}")  # fmt: skip
    else:
        executed = {}
        if args.count_flops and device.type == "cuda":
            meta_run = build_run(args, torch.device("meta"))
            executed = {g: count_flops(meta_run, g)["tflop_per_image"] for g in modes}
            del meta_run
        result["timings"] = []
        for given in modes:
            r = time_steps(run, args, given)
            if given in executed:
                r["executed_tflop_per_image"] = executed[given]
                if args.peak_tflops:
                    r["executed_util"] = r["images_per_s"] * executed[given] / args.peak_tflops
            result["timings"].append(r)
            line = (f"latents {r['latents']}: {r['images_per_s']:.2f} images/s, "
                    f"{r['s_per_step'] * 1e3:.1f} ms/step (median "
                    f"{r['median_s_per_step'] * 1e3:.1f}, min {r['min_s_per_step'] * 1e3:.1f}) "
                    f"over {args.steps} steps after {args.warmup}")  # fmt: skip
            if "peak_allocated_gb" in r:
                line += (f"; peak {r['peak_allocated_gb']:.2f} GB allocated "
                         f"({r['peak_reserved_gb']:.2f} GB reserved)")  # fmt: skip
            if "mfu" in r:
                line += f"; MFU {100 * r['mfu']:.1f} % of {args.peak_tflops:g} TFLOP/s"
            if "executed_util" in r:
                line += (f"; executed {r['executed_tflop_per_image']:.1f} TFLOP/image = "
                         f"{100 * r['executed_util']:.1f} % of peak")  # fmt: skip
            if r["nonfinite_losses"]:
                line += f"; {r['nonfinite_losses']} non-finite losses"
            print(line)
    print("result " + json.dumps(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
