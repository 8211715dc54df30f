"""SAM-Med3D checkpoints (``sam_med3d_turbo.pth``): ``{"model_state_dict": <weights>, ...}``.

The promptable family converts the file itself (``tsfm_backend.models.sam_med3d.convert_official_checkpoint``);
this module recognises it by the weight names and hands it over, so the family is imported only when
such a file is read. PyMIC files share the top-level key, so this format is tried first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.model_card import ModelCard

STATE_DICT_KEY = "model_state_dict"
SIGNATURE_KEYS = ("image_encoder.patch_embed.proj.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                  "mask_decoder.iou_token.weight")


def matches(checkpoint: Any) -> bool:
    weights = checkpoint.get(STATE_DICT_KEY) if isinstance(checkpoint, dict) else None
    return isinstance(weights, dict) and all(key in weights for key in SIGNATURE_KEYS)


def from_checkpoint(checkpoint: dict, path: Path,
                    model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of a SAM-Med3D checkpoint; CheckpointError naming the file when it fits no preset."""
    from tsfm_backend.models.sam_med3d import convert_official_checkpoint

    try:
        state_dict, card = convert_official_checkpoint(checkpoint, model_id)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    card.provenance = {"format": "sam_med3d", "source_file": str(path), **card.provenance}
    return state_dict, card
