"""The train stage: LoKr fine-tuning of SDXL (needs the `train` extra: torch, diffusers,
transformers, lycoris-lora, bitsandbytes, safetensors). Nothing here is imported by the
data stages."""
