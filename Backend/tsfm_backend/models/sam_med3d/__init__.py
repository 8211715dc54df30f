"""SAM-Med3D (and SAM-Med3D-turbo): a fully 3D Segment Anything for volumetric medical images.

Family interface: ``build(**architecture)``, ``PRESETS``, ``ENCODER_KEYS`` / ``STEM_KEYS`` (state_dict
prefixes) and the authors' checkpoint layout (``official``). The network is promptable:
``SamMed3D.encode(crop)`` once per crop, then ``SamMed3D.decode(embedding, points, labels, mask_logits)``
per click; ``tsfm_backend.inference.sam_med3d`` runs the authors' click procedure around it.
"""

from __future__ import annotations

from typing import Any

from .model import SamMed3D
from .official import (
    STATE_DICT_KEY,
    TARGET_SPACING_MM,
    checkpoint_differences,
    convert_official_checkpoint,
    is_official_checkpoint,
    match_preset,
    sam_med3d_card,
)
from .presets import PRESETS

__all__ = [
    "ENCODER_KEYS",
    "PRESETS",
    "STATE_DICT_KEY",
    "STEM_KEYS",
    "TARGET_SPACING_MM",
    "SamMed3D",
    "build",
    "checkpoint_differences",
    "convert_official_checkpoint",
    "is_official_checkpoint",
    "match_preset",
    "sam_med3d_card",
]

ENCODER_KEYS = ("image_encoder.",)
STEM_KEYS = ("image_encoder.patch_embed.",)


def build(**architecture: Any) -> SamMed3D:
    """A fresh ``SamMed3D``; keywords as in ``PRESETS`` (missing ones take the released values)."""
    return SamMed3D(**architecture)
