"""The train stage: LoKr fine-tuning of SDXL (needs the `train` extra: torch, diffusers,
transformers, lycoris-lora, bitsandbytes, safetensors). Nothing here is imported by the
data stages."""

# the train stage's output files other stages read (evaluate: checkpoints and EMA weights);
# the writers (`checkpoint`, `ema`) take the names from here
META = "meta.json"  # a checkpoint folder is complete when this is there
EMA_FILE = "ema.safetensors"  # a checkpoint's EMA weights, beside adapter.safetensors
# the EMA's LoKr file beside lokr.safetensors, and its metadata key (JSON: decay, warmup,
# start_step, step), which the evaluate stage offers beside the raw weights
EMA_LOKR, META_EMA = "lokr-ema.safetensors", "kohaku_ema"
