"""The network a recipe trains: the model card's architecture, with deep supervision where the family has it.

The card in a config is the card of the model that will be exported, so the backend builds the very
same architecture. Deep supervision only adds outputs during training (the weight names do not change),
so the exported card leaves it off.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def card_from_config(settings: dict[str, Any]):
    """A ``ModelCard`` from a config's ``model`` section; errors name the bad field."""
    from tsfm_backend.model_card import ModelCard, ModelCardError

    if not isinstance(settings, dict) or "family" not in settings or "architecture" not in settings:
        raise ValueError(f"config 'model' must give at least 'family' and 'architecture', got {settings!r}")
    values = {"id": "trained-model", **settings}
    try:
        return ModelCard.from_dict(values)
    except (ModelCardError, TypeError) as error:
        raise ValueError(f"config 'model': {error}") from error


def family_of(card):
    from tsfm_backend.models import family_module

    return family_module(card.family)


def training_network(card, deep_supervision: bool = False) -> nn.Module:
    """The card's network in train mode; with ``deep_supervision`` it returns all decoder outputs
    (full resolution first) when the family has them (``deep_supervision`` attribute), else one output."""
    module = family_of(card)
    architecture = {k: v for k, v in card.architecture.items() if k not in ("deep_supervision", "multiscale_pred")}
    try:
        network = module.build(**architecture)
    except TypeError as error:
        raise ValueError(f"model architecture {architecture} does not fit family {card.family!r}: {error}") from error
    set_deep_supervision(network, deep_supervision)
    return network.train()


def set_deep_supervision(network: nn.Module, enabled: bool) -> None:
    """Switch a network's deep-supervision outputs on or off in place (no-op where it has none)."""
    from tsfm_training.loop import unwrap

    bare = unwrap(network)
    if hasattr(bare, "deep_supervision"):
        bare.deep_supervision = enabled
