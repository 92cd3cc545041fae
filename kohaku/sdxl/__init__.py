"""The SDXL model, shared by the model stages (train, evaluate, merge) and the demo: its
architecture and configs (`configs`, `tiny` for tests and the demo), the SGM <-> diffusers
tensor names (`names`, `layout`), checked loading streamed tensor by tensor (`model`,
`parts`, `streaming`, `tensors`, `embeddings`, `tokenizers`), writing (`saving`), text
conditioning (`text`), LoKr networks and files (`lokr`), LoKr deltas folded into base
weights (`lokr_deltas`, `baselokr`) and the noise schedule a model is used with
(`schedule`). It sits below every stage and imports none of them (bar their config
models). Needs the `train` extra (torch, diffusers, transformers, lycoris-lora).
"""
