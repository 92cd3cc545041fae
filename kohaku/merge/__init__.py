"""Model merging: weighted sums and differences of SDXL checkpoints, per tensor, streamed.

Reads a merge recipe (TOML, `config`: `MergeRecipe`, `load_recipe`), the models it names (SGM
single-file `.safetensors` or diffusers folders, `sources`) and optionally kohaku LoKrs
(their deltas: `kohaku.sdxl.lokr_deltas`). Writes one SGM single-file `.safetensors` in
fp32, fp16, bf16 or fp8 (e4m3fn), tensor by tensor (`kohaku.sdxl.tensors`), so memory holds
a few tensors at a time, never a whole model (`run`). `folder` folds a LoKr into a diffusers
folder instead (the train stage's export).

    from kohaku.merge import load_recipe, merge
    merge(load_recipe("gamma-rev1.toml"))

or `python -m kohaku.merge gamma-rev1.toml`.
"""

from kohaku.merge.config import LokrMerge, MbwWeights, MergeRecipe, load_recipe, parse_expression
from kohaku.merge.folder import merge_lokr_into_folder
from kohaku.merge.run import DTYPES, MergeResult, merge

__all__ = [
    "DTYPES",
    "LokrMerge",
    "MbwWeights",
    "MergeRecipe",
    "MergeResult",
    "load_recipe",
    "merge",
    "merge_lokr_into_folder",
    "parse_expression",
]
