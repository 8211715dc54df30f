"""3DSAM-adapter checkpoints: ``{'encoder_dict', 'decoder_dict', 'feature_dict': [4 prompt encoders], ...}``.

The promptable family converts the official layout itself
(``tsfm_backend.models.sam3d.from_official_checkpoint``); this module only recognises the file and
hands it over, so the family is imported only when such a file is read.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.nnunet_common import default_model_id
from tsfm_backend.model_card import ModelCard

REQUIRED_KEYS = ("encoder_dict", "decoder_dict", "feature_dict")


def matches(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and all(key in checkpoint for key in REQUIRED_KEYS)


def from_checkpoint(checkpoint: dict, path: Path, model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of an official 3DSAM-adapter checkpoint, via the sam3d family's converter."""
    try:
        family = importlib.import_module("tsfm_backend.models.sam3d")
    except ImportError as error:
        raise CheckpointError(f"{path}: a 3DSAM-adapter checkpoint, but the sam3d model family is not available") from error
    network, card = family.from_official_checkpoint(checkpoint)
    card.id = model_id or (card.id if card.id else default_model_id(path.stem))
    card.provenance = {"format": "sam3d", "source": str(path), **card.provenance}
    card.validate()
    return network.state_dict(), card
