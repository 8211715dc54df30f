"""Sizes of the SAM-Med3D network, as data: the released ViT-B configuration and a tiny one for tests.

Each entry is the keyword arguments of ``SamMed3D`` (what a model card stores as ``architecture``).
The names follow the authors' builder (MedIM's ``build_sam3D_vit_b_ori``, registered as "SAM-Med3D").
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # SAM-Med3D and SAM-Med3D-turbo as released: 128^3 crops, 16^3 patches (8^3 tokens), ViT-B, windows of
    # 14 tokens (wider than the grid: windowed blocks attend over a zero-padded 14^3 grid), 384-wide prompts.
    "vit_b_ori": {
        "img_size": 128,
        "patch_size": 16,
        "in_chans": 1,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "mlp_ratio": 4.0,
        "out_chans": 384,
        "window_size": 14,
        "global_attn_indexes": [2, 5, 8, 11],
        "mask_in_chans": 16,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
        "transformer_depth": 2,
        "transformer_heads": 8,
        "transformer_mlp_dim": 2048,
    },
    # Same structure, a fraction of a second on a CPU: 64^3 crops, 16^3 patches (4^3 tokens, a 16^3
    # low-resolution mask = crop / 4 as the authors' loop assumes), windows of 3 (padded to 6: eight
    # windows, each partly padding). The mask decoder keeps the released depth, heads and MLP width,
    # which the authors' code fixes, so their network can be built at this size.
    "tiny": {
        "img_size": 64,
        "patch_size": 16,
        "in_chans": 1,
        "embed_dim": 24,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 2.0,
        "out_chans": 48,
        "window_size": 3,
        "global_attn_indexes": [1],
        "mask_in_chans": 8,
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 16,
        "transformer_depth": 2,
        "transformer_heads": 8,
        "transformer_mlp_dim": 2048,
    },
}
