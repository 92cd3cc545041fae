"""LoKr adapters (lycoris-lora) on the SDXL UNet and both text encoders.

Reads a LoKr preset (TOML: target module classes and a factor per class, for the UNet and
the text encoders; built-ins in `kohaku/train/presets/`) and, to reload, a LoKr
safetensors file. Writes LoKr safetensors files whose keys follow the kohya layout that
ComfyUI and A1111 load (`lora_unet_<SGM module path>`, `lora_te1_text_model_...`,
`lora_te2_text_model_...`), with the metadata a kohya-trained LyCORIS SDXL network carries
(`ss_*`, `modelspec.*`, see `metadata`) and every tensor finite. Training uses the modules'
own (diffusers) names; `kohya_name` maps them on export and back on load.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from kohaku.errors import ConfigError
from kohaku.sdxl.names import UnetLayout, underscore_table
from kohaku.stage import atomic_path

PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
# LyCORIS' full-matrix LoKr recipe: a dimension above every layer's size (so no factor is
# low-rank) and alpha 1; with both Kronecker factors full the scale is 1 whatever alpha is
LINEAR_DIM, LINEAR_ALPHA = 100_000, 1.0
# kohya sd-scripts' base model version for every SDXL network (sdxl_model_util.py has no
# v-prediction variant: v-prediction shows in `modelspec.prediction_type`); A1111 and Forge
# list a network under SDXL when this starts with "sdxl_"
SDXL_BASE_VERSION = "sdxl_base_v1-0"
# `loss.prediction` -> ModelSpec's `modelspec.prediction_type` (the spec and kohya write `v`)
SPEC_PREDICTION = {"epsilon": "epsilon", "v_prediction": "v"}
# `loss.zero_terminal_snr`, under sd-scripts' name (train_network.py writes str(bool)); ModelSpec
# has no such key. Merges and exports read it (`kohaku.sdxl.lokr_deltas.LokrDeltas.zero_snr`)
META_ZERO_SNR = "ss_zero_terminal_snr"


class Targets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    target_module: list[str] = Field(min_length=1, description="module classes to adapt")
    factor: int = Field(8, ge=1, description="LoKr factor for classes not in `factors`")
    factors: dict[str, int] = Field({}, description="LoKr factor per module class")


class LokrPreset(BaseModel):
    """Which modules get a LoKr and with which factor."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(
        "custom", description="the preset's name (a built-in's name, else the TOML file's stem)"
    )
    full_matrix: bool = Field(True, description="both Kronecker factors full (no low rank)")
    bypass: bool = Field(
        True, description="run the LoKr as its own branch (W x + dW x) instead of rebuilding "
        "W + dW per step: the same result with about half the matmul work",
    )  # fmt: skip
    unet: Targets
    text: Targets


@dataclass
class Adapters:
    """One lycoris network per adapted model (`text_encoder*` absent when not trained)."""

    networks: dict[str, torch.nn.Module]
    unet_table: dict[str, str]  # diffusers -> SGM UNet module names, with underscores
    preset: LokrPreset

    def parameters(self, component: str) -> list[torch.nn.Parameter]:
        net = self.networks.get(component)
        return [] if net is None else [p for p in net.parameters() if p.requires_grad]


def load_preset(name_or_path: str) -> LokrPreset:
    """A built-in preset by name (`delta`, `attn-only`) or a TOML file."""
    path = Path(name_or_path)
    name = path.stem if path.suffix == ".toml" else name_or_path
    if path.suffix == ".toml":
        if not path.is_file():
            raise ConfigError(f"LoKr preset {path} does not exist")
        text = path.read_text()
    else:
        files = resources.files("kohaku.train.presets")
        if not files.joinpath(f"{name_or_path}.toml").is_file():
            raise ConfigError(f"unknown LoKr preset {name_or_path!r}: give a built-in name "
                              "(delta, attn-only) or a .toml path")  # fmt: skip
        text = files.joinpath(f"{name_or_path}.toml").read_text()
    return LokrPreset.model_validate({"name": name, **tomllib.loads(text)})


def check_preset(preset: LokrPreset, models: dict[str, torch.nn.Module]) -> None:
    """Every module class the preset names exists in the models it targets (call it on
    meta-device models: nothing is allocated)."""
    for component, model in models.items():
        targets = preset.unet if component == "unet" else preset.text
        classes = {type(m).__name__ for m in model.modules()}
        unknown = sorted((set(targets.target_module) | set(targets.factors)) - classes)
        if unknown:
            raise ConfigError(f"LoKr preset names module classes that {component} does not "
                              f"have: {unknown}; it has e.g. {sorted(classes)[:12]}")  # fmt: skip


def attach(preset: LokrPreset, models: dict[str, torch.nn.Module], seed: int) -> Adapters:
    """Wrap each model's target modules with LoKr (w1 random, w2 zero: the model's output
    is unchanged until trained); the base weights are frozen."""
    from lycoris import LycorisNetwork, create_lycoris

    networks = {}
    for i, (component, model) in enumerate(models.items()):
        targets = preset.unet if component == "unet" else preset.text
        excluded = _unused_layers(component, model)
        LycorisNetwork.apply_preset(_lycoris_preset(targets, PREFIXES[component], excluded))
        torch.manual_seed(seed * 7919 + i)
        model.requires_grad_(False)
        net = create_lycoris(model, 1.0, linear_dim=LINEAR_DIM, linear_alpha=LINEAR_ALPHA,
                             algo="lokr", factor=targets.factor,
                             full_matrix=preset.full_matrix, bypass_mode=preset.bypass)  # fmt: skip
        net.apply_to()
        networks[component] = net
    unet = models["unet"]
    layout = UnetLayout.from_config(dict(unet.config))
    table = underscore_table([n for n, _ in unet.named_modules()], layout)
    return Adapters(networks, table, preset)


def _unused_layers(component: str, model: torch.nn.Module) -> list[str]:
    """SDXL reads TE1's penultimate hidden states only: its last layer never affects the
    output, so it gets no LoKr (an adapter there would never learn, and DDP would wait for
    its gradients forever)."""
    if component != "text_encoder":
        return []
    last = model.config.num_hidden_layers - 1
    return [rf"(text_model\.)?encoder\.layers\.{last}(\.|$)"]


def _lycoris_preset(targets: Targets, prefix: str, excluded: list[str]) -> dict:
    """The complete preset every time: lycoris keeps it in class attributes."""
    return {
        "enable_conv": True, "target_module": list(targets.target_module), "target_name": [],
        "module_algo_map": {c: {"factor": f} for c, f in targets.factors.items()},
        "name_algo_map": {}, "lora_prefix": prefix, "use_fnmatch": False,
        "exclude_name": excluded,
    }  # fmt: skip


def kohya_name(key: str, unet_table: dict[str, str]) -> str:
    """A training-time (diffusers) LoKr key -> its kohya-layout name; `unet_table` is
    `Adapters.unet_table` (diffusers -> SGM module names, underscores)."""
    module, _, leaf = key.partition(".")
    for component, prefix in PREFIXES.items():
        if not module.startswith(prefix + "_"):
            continue
        rest = module[len(prefix) + 1 :]
        if component == "unet":
            if rest not in unet_table:
                raise ValueError(f"UNet module {rest} has no SGM name")
            rest = unet_table[rest]
        elif not rest.startswith(("text_model_", "text_projection")):
            rest = "text_model_" + rest  # transformers 5 flattened CLIPTextModel
        return f"{prefix}_{rest}.{leaf}"
    raise ValueError(f"{key} is not a LoKr key of the UNet or a text encoder")


def state_dict(adapters: Adapters) -> dict[str, torch.Tensor]:
    """All LoKr tensors under their kohya-layout names."""
    out = {}
    for net in adapters.networks.values():
        for key, value in net.state_dict().items():
            out[kohya_name(key, adapters.unet_table)] = value
    return out


def save(adapters: Adapters, path: Path, dtype: torch.dtype = torch.float16,
         extra: dict | None = None, prediction: str = "epsilon",
         title: str | None = None, zero_snr: bool = False) -> Path:  # fmt: skip
    """The LoKr as safetensors (kohya names, kohya/LyCORIS metadata), written atomically.
    `prediction`: what it was trained to predict (`epsilon`, `v_prediction`), `zero_snr`: on
    a zero-terminal-SNR schedule; `title`: its name in clients' lists (default: the file's
    stem)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = file_tensors(adapters, dtype)
    meta = metadata(adapters.preset, list(adapters.networks), prediction, title or path.stem,
                    zero_snr)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={**meta, **(extra or {})})
    return path


def file_tensors(adapters: Adapters, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors as stored: in `dtype`, every one finite. Where both Kronecker factors
    are full matrices, lycoris keeps alpha = its dimension (100000: +inf in fp16) and then
    ignores it, and so do ComfyUI and A1111 (no low-rank dimension to divide by: scale 1);
    1.0 is stored there, the value LyCORIS itself writes after loading such a file."""
    state = state_dict(adapters)
    out = {}
    for key, value in state.items():
        module, _, leaf = key.partition(".")
        if leaf == "alpha" and {f"{module}.lokr_w1", f"{module}.lokr_w2"} <= state.keys():
            value = torch.ones(())
        out[key] = value.detach().to("cpu", dtype).contiguous()
    bad = [k for k, v in out.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{len(bad)} LoKr tensors are not finite in {dtype}, e.g. {bad[:3]}: "
                         "the training diverged, or save in float32")  # fmt: skip
    return out


def metadata(preset: LokrPreset, components: list[str], prediction: str,
             title: str, zero_snr: bool = False) -> dict[str, str]:  # fmt: skip
    """The header of a kohya-trained LyCORIS SDXL network (sd-scripts train_network.py and
    library/sai_model_spec.py): the `ss_*` keys A1111 and Forge read to tell SDXL from SD1
    and to name the file, ModelSpec 1.0.0 (`modelspec.architecture` is the exact string
    Forge compares), and the kohaku preset that `read_recipe` reloads."""
    return {
        "ss_base_model_version": SDXL_BASE_VERSION, "ss_v2": "False",
        "ss_network_module": "lycoris.kohya", "ss_network_dim": str(LINEAR_DIM),
        "ss_network_alpha": str(LINEAR_ALPHA), "ss_network_args": json.dumps(network_args(preset)),
        "ss_output_name": title,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": title,
        "modelspec.date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "modelspec.resolution": "1024x1024",
        "modelspec.prediction_type": SPEC_PREDICTION[prediction],
        META_ZERO_SNR: str(zero_snr),
        "kohaku_preset": preset.model_dump_json(), "kohaku_components": json.dumps(components),
    }  # fmt: skip


def network_args(preset: LokrPreset) -> dict[str, str]:
    """The preset as kohya records `--network_args` for LyCORIS' kohya wrapper (strings);
    per-class factors as `Class=factor` lists."""

    def factors(targets: Targets) -> str:
        return ",".join(f"{c}={f}" for c, f in sorted(targets.factors.items()))

    return {
        "algo": "lokr", "preset": preset.name, "factor": str(preset.unet.factor),
        "full_matrix": str(preset.full_matrix), "bypass_mode": str(preset.bypass),
        "conv_dim": str(LINEAR_DIM), "conv_alpha": str(LINEAR_ALPHA),
        "unet_factors": factors(preset.unet), "text_factor": str(preset.text.factor),
        "text_factors": factors(preset.text),
    }  # fmt: skip


def load_into(adapters: Adapters, path: Path) -> None:
    """Load a saved LoKr (kohya names) into attached adapters of the same preset."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    for net in adapters.networks.values():
        own = net.state_dict()
        names = {kohya_name(k, adapters.unet_table): k for k in own}
        missing = sorted(set(names) - set(saved))
        if missing:
            raise ConfigError(f"{path} lacks {len(missing)} LoKr tensors, e.g. {missing[:3]}")
        net.load_state_dict({names[k]: saved[k].to(own[names[k]].dtype) for k in names})


def merge(adapters: Adapters) -> None:
    """Fold the LoKr into the base weights and unhook it: the models then run alone."""
    for net in adapters.networks.values():
        net.merge_to(1.0)
        net.restore()


def read_recipe(path: Path) -> tuple[LokrPreset, list[str]]:
    """The preset and adapted components a kohaku LoKr file was trained with."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "kohaku_preset" not in meta:
        raise ConfigError(f"{path} was not written by kohaku (no kohaku_preset metadata)")
    return LokrPreset.model_validate_json(meta["kohaku_preset"]), json.loads(
        meta["kohaku_components"]
    )
