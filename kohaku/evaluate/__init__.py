"""The evaluate stage: a fixed prompt set from the run's captions, sampled from the base
model and the run's LoKr checkpoints with fixed seeds, scored (CLIP score, CCIP character
fidelity, FID/KID) and compared across checkpoints.

`config` and `prompts` are light (pydantic, Polars); `generate`, `scoring` and `run` (the
stage entry) load torch and diffusers; `report` draws with Pillow. See `run` for the output
layout.
"""
