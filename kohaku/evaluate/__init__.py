"""The evaluate stage: a fixed prompt set from the run's captions, sampled from the base
model and the run's LoKr checkpoints with fixed seeds, scored (CLIP score, CCIP character
fidelity, FID/KID) and compared across checkpoints.

`config` and `prompts` are light (pydantic, Polars); `generate`, `scoring` and `stage` load
torch and diffusers; `report` draws with Pillow. See `stage` for the output layout.
"""
