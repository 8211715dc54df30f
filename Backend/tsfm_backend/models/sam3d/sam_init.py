"""Starting a SAM-3D network from Segment Anything's 2D image encoder, as the paper's training does.

SAM's ``sam_vit_b_01ec64.pth`` is the state_dict of the whole 2D model (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``). The 3D encoder reuses its patch embedding, position table,
and every block's norms, attention (qkv, proj, the two rel-pos tables) and MLP unchanged; its 2D neck
and the 2D prompt encoder and decoder have no 3D counterpart. Each block's new depth table ``rel_pos_d``
starts as the mean of the two in-plane tables. Adapters, ``slice_embed``, ``depth_embed``, ``neck_3d``,
the prompt encoder and the decoder keep their fresh initialisation: they are what adapter fine-tuning
trains (``TRAINABLE_PATTERNS``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from tsfm_backend.formats.errors import CheckpointError

from .model import Sam3D

ENCODER_PREFIX = "image_encoder."
# Parts of SAM's 2D image encoder that the 3D encoder holds under the same names.
SHARED_BLOCK_PARTS = (
    "norm1.",
    "attn.qkv.",
    "attn.proj.",
    "attn.rel_pos_h",
    "attn.rel_pos_w",
    "norm2.",
    "mlp.",
)
UNUSED_SAM_PARTS = ("neck.",)


def sam_shared_keys(network: Sam3D) -> list[str]:
    """Image-encoder keys (without prefix) of ``network`` that SAM's image encoder provides."""
    keys = []
    for key in network.image_encoder.state_dict():
        if key.startswith("patch_embed.") or key == "pos_embed":
            keys.append(key)
        elif key.startswith("blocks.") and key.split(".", 2)[2].startswith(SHARED_BLOCK_PARTS):
            keys.append(key)
    return keys


def _sam_image_encoder(sam_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAM's image-encoder entries without prefix, from a whole-model or an encoder-only state_dict."""
    if any(key.startswith(ENCODER_PREFIX) for key in sam_state_dict):
        return {
            k[len(ENCODER_PREFIX) :]: v for k, v in sam_state_dict.items() if k.startswith(ENCODER_PREFIX)
        }
    return dict(sam_state_dict)


def init_from_sam(network: Sam3D, sam_state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy SAM's 2D image-encoder weights into ``network.image_encoder`` and seed ``rel_pos_d``.

    Args:
        network: a fresh ``Sam3D`` whose encoder width, depth and windows match the SAM model.
        sam_state_dict: SAM's checkpoint (whole model, keys ``image_encoder.*``) or its image encoder's
            own state_dict (no prefix).
    Returns:
        The image-encoder keys that were copied.
    Raises:
        CheckpointError naming missing, unexpected or mis-shaped SAM keys (a ViT-L/H file in a ViT-B
        network, say); nothing is copied then.
    """
    sam = _sam_image_encoder(sam_state_dict)
    target = network.image_encoder.state_dict()
    shared = sam_shared_keys(network)
    missing = [k for k in shared if k not in sam]
    unexpected = [k for k in sam if k not in shared and not k.startswith(UNUSED_SAM_PARTS)]
    wrong = [
        f"{k} {tuple(sam[k].shape)} != {tuple(target[k].shape)}"
        for k in shared
        if k in sam and sam[k].shape != target[k].shape
    ]
    problems = [("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)]
    if any(items for _, items in problems):
        details = "; ".join(
            f"{label}: {', '.join(items[:5])}" + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            for label, items in problems
            if items
        )
        raise CheckpointError(f"SAM image encoder does not fit this network: {details}")
    with torch.no_grad():
        for key in shared:
            target[key].copy_(sam[key])
        for block in network.image_encoder.blocks:
            block.attn.rel_pos_d.copy_(0.5 * (block.attn.rel_pos_h + block.attn.rel_pos_w))
    return shared
