"""UNet module names: diffusers' layout -> the original SGM layout of SDXL checkpoints, as
kohya / A1111 / ComfyUI LoRA and LoKr files name them (`input_blocks.4.1...`).

Pure string functions on dotted module paths; reads and writes nothing. lycoris joins
module paths with underscores, which cannot be split back unambiguously, so
`underscore_table` maps a model's own module names both ways.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RESNET = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}  # fmt: skip
FIXED = {
    "conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2",
}  # fmt: skip


@dataclass(frozen=True)
class UnetLayout:
    """What the mapping needs of a UNet config: resnets per down block, and which up
    blocks have attentions (SDXL: 2 and blocks 0 and 1)."""

    layers_per_block: int = 2
    up_blocks_with_attention: tuple[int, ...] = (0, 1)

    @classmethod
    def from_config(cls, config: dict) -> UnetLayout:
        ups = config.get("up_block_types", ())
        with_attn = tuple(i for i, t in enumerate(ups) if "CrossAttn" in t)
        return cls(int(config.get("layers_per_block", 2)), with_attn)


SDXL = UnetLayout()


def sgm_module_path(name: str, layout: UnetLayout | None = None) -> str:
    """`down_blocks.1.attentions.0.proj_in` -> `input_blocks.4.1.proj_in` (a module path,
    or a parameter path: `.weight` and the like pass through)."""
    layout = layout or SDXL
    for fixed, sgm in FIXED.items():
        if name == fixed or name.startswith(fixed + "."):
            return sgm + name[len(fixed) :]
    step = layout.layers_per_block + 1
    for pattern, build in _RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return build(match, step, layout)
    raise ValueError(f"no SGM name for UNet module {name!r}")


def underscore_table(module_names: list[str], layout: UnetLayout | None = None) -> dict:
    """{diffusers path with `_`: SGM path with `_`} for a UNet's module names (those with
    no SGM name, such as the root, are left out)."""
    table = {}
    for name in module_names:
        try:
            table[name.replace(".", "_")] = sgm_module_path(name, layout).replace(".", "_")
        except ValueError:
            continue
    return table


def _resnet(rest: str) -> str:
    for old, new in RESNET.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _down(m: re.Match, step: int, layout: UnetLayout) -> str:
    i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    part = f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"
    return f"input_blocks.{step * i + j + 1}.{part}"


def _downsample(m: re.Match, step: int, layout: UnetLayout) -> str:
    return f"input_blocks.{step * (int(m[1]) + 1)}.0.op{m[2]}"


def _mid(m: re.Match, step: int, layout: UnetLayout) -> str:
    kind, j, rest = m[1], int(m[2]), m[3]
    if kind == "resnets":
        return f"middle_block.{2 * j}.{_resnet(rest)}"
    return f"middle_block.1.{rest}"


def _up(m: re.Match, step: int, layout: UnetLayout) -> str:
    i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
    part = f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}"
    return f"output_blocks.{step * i + j}.{part}"


def _upsample(m: re.Match, step: int, layout: UnetLayout) -> str:
    i = int(m[1])
    slot = 2 if i in layout.up_blocks_with_attention else 1
    return f"output_blocks.{step * i + step - 1}.{slot}.conv{m[2]}"


_RULES = [
    (r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", _down),
    (r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", _downsample),
    (r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", _mid),
    (r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", _up),
    (r"up_blocks\.(\d+)\.upsamplers\.0\.conv(.*)", _upsample),
]
