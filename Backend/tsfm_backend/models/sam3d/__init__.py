"""3DSAM-adapter: SAM's ViT-B made 3D with adapters, a click prompt encoder and a 3D mask decoder.

Family interface: ``build(**architecture)``, ``PRESETS``, ``ENCODER_KEYS`` / ``STEM_KEYS`` (state_dict
prefixes), ``TRAINABLE_PATTERNS`` (what parameter-efficient fine-tuning trains, as in the paper) and
``from_official_checkpoint`` for the authors' ``{encoder_dict, decoder_dict, feature_dict}`` files, and
``init_from_sam`` to start adapter fine-tuning from Segment Anything's 2D image encoder.

The network is promptable: ``Sam3D.forward(crop, points)`` takes a (B, 3, S, S, S) crop and clicks;
``tsfm_backend.inference.sam3d_predictor`` runs it interactively with a cached image embedding.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from .model import CropEmbedding, Sam3D
from .official import (
    DATASETS,
    check_dataset,
    convert_official_checkpoint,
    from_official_checkpoint,
    is_official_checkpoint,
    match_preset,
    sam3d_card,
)
from .presets import PRESETS
from .sam_init import init_from_sam, sam_shared_keys

__all__ = [
    "DATASETS",
    "ENCODER_KEYS",
    "PRESETS",
    "STEM_KEYS",
    "TRAINABLE_PATTERNS",
    "CropEmbedding",
    "Sam3D",
    "build",
    "check_dataset",
    "convert_official_checkpoint",
    "from_official_checkpoint",
    "init_from_sam",
    "is_official_checkpoint",
    "is_trainable",
    "mark_trainable",
    "match_preset",
    "sam3d_card",
    "sam_shared_keys",
]

ENCODER_KEYS = ("image_encoder.",)
STEM_KEYS = ("image_encoder.patch_embed.", "image_encoder.slice_embed.")

# Adapter fine-tuning: SAM's patch embedding, positions, attention and MLP weights stay frozen.
TRAINABLE_PATTERNS = (
    "image_encoder.depth_embed",
    "image_encoder.slice_embed.*",
    "image_encoder.blocks.*.norm1.*",
    "image_encoder.blocks.*.norm2.*",
    "image_encoder.blocks.*.adapter.*",
    "image_encoder.blocks.*.attn.rel_pos_d",
    "image_encoder.neck_3d.*",
    "prompt_encoder.*",
    "mask_decoder.*",
)


def build(**architecture: Any) -> Sam3D:
    """A fresh ``Sam3D``; keywords as in ``PRESETS`` (missing ones take the ViT-B values)."""
    return Sam3D(**architecture)


def is_trainable(name: str) -> bool:
    """Whether parameter ``name`` (a ``Sam3D`` state_dict key) is trained in adapter fine-tuning."""
    return any(fnmatchcase(name, pattern) for pattern in TRAINABLE_PATTERNS)


def mark_trainable(network: nn.Module) -> int:
    """Set ``requires_grad`` by ``TRAINABLE_PATTERNS``; returns the number of trainable parameters."""
    count = 0
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(is_trainable(name))
        count += parameter.numel() if parameter.requires_grad else 0
    return count
