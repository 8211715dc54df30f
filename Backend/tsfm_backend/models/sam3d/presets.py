"""Sizes of the SAM-3D network, as data: the published ViT-B configuration and a tiny one for tests.

Each entry is the keyword arguments of ``Sam3D`` (and what a model card stores as ``architecture``).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # 3DSAM-adapter as released: SAM ViT-B, 128^3 crops upsampled x4 to 512 slices of 512^2, 32^3 tokens.
    "vit_b": {
        "crop_size": 128,
        "upsample": 4,
        "patch_size": 16,
        "num_slice": 16,
        "in_chans": 3,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "mlp_ratio": 4.0,
        "out_chans": 256,
        "pretrain_img_size": 1024,
        "window_size": 14,
        "cubic_window_size": 8,
        "global_attn_indexes": [2, 5, 8, 11],
        "prompt_depth": 2,
        "prompt_heads": 8,
        "prompt_mlp_dim": 2048,
        "decoder_channels": 128,
        "num_classes": 2,
    },
    # Same structure, seconds on a CPU: 32^3 crops upsampled x2, 8^3 tokens, 4-token windows shifted by 2.
    "tiny": {
        "crop_size": 32,
        "upsample": 2,
        "patch_size": 8,
        "num_slice": 8,
        "in_chans": 3,
        "embed_dim": 32,
        "depth": 4,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "out_chans": 16,
        "pretrain_img_size": 128,
        "window_size": 3,
        "cubic_window_size": 4,
        "global_attn_indexes": [1, 3],
        "prompt_depth": 2,
        "prompt_heads": 2,
        "prompt_mlp_dim": 32,
        "decoder_channels": 8,
        "num_classes": 2,
    },
}
