"""The SDXL 1.0 architecture as configs (no weights): the UNet, the VAE and both text
encoders' shapes, for building full-size models with random weights or on the meta device
(benchmarks, name-mapping tests, LoKr size estimates). Reads and writes nothing.
"""

from __future__ import annotations

SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}  # fmt: skip
SDXL_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "sample_size": 1024, "scaling_factor": 0.13025,
}  # fmt: skip
# hidden size, layers, attention heads, activation; the MLP is 4x the hidden size
SDXL_TEXT = {"text_encoder": (768, 12, 12, "quick_gelu"), "text_encoder_2": (1280, 32, 20, "gelu")}
SDXL_TEXT_PROJECTION = 1280
SDXL_VOCAB = 49408
