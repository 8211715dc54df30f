"""Network families. Each family is one module with ``build(**architecture) -> nn.Module``, ``PRESETS``,
``ENCODER_KEYS`` and ``STEM_KEYS`` (state_dict key prefixes, for fine-tuning and channel adaptation).

Families are imported lazily, by name, so listing them costs nothing and a family's dependencies load
only when one of its networks is built. Add a family with one line in ``FAMILIES``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from tsfm_backend.model_card import ModelCard

FAMILIES: dict[str, str] = {
    "stunet": "tsfm_backend.models.stunet",
    "tsfm": "tsfm_backend.models.tsfm",
    "pctnet": "tsfm_backend.models.pctnet",
    "fmunet": "tsfm_backend.models.fmunet",
    "suprem": "tsfm_backend.models.suprem",
    "click_unet": "tsfm_backend.models.click_unet",
    "sam3d": "tsfm_backend.models.sam3d",
    "sam_med3d": "tsfm_backend.models.sam_med3d",
    "vista3d": "tsfm_backend.models.vista3d",
}


class UnknownFamilyError(ValueError):
    """A model card names an architecture family this backend does not have."""


def family_module(family: str) -> ModuleType:
    """The module of one family; raises UnknownFamilyError listing the known ones."""
    if family not in FAMILIES:
        raise UnknownFamilyError(f"unknown model family {family!r}; known families: {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[family])


def build_network(card: ModelCard) -> nn.Module:
    """The card's network with fresh weights, in eval mode.

    Maps (B, card.in_channels, Z, Y, X) float to (B, card.num_classes, Z, Y, X) logits.
    """
    module = family_module(card.family)
    try:
        network = module.build(**card.architecture)
    except TypeError as error:
        raise ValueError(f"model {card.id!r}: architecture {card.architecture} does not fit {card.family}: {error}") from error
    return network.eval()
