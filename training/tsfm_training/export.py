"""Exporting a trained network as a model the backend loads: its own writer, its own card.

``export_model`` goes through ``tsfm_backend.checkpoints.save_model``, which checks the weights against
the card's architecture before writing ``model.safetensors`` + ``model.json``; the folder then works with
``tsfm-backend import`` and ``predict`` as any other model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn


def inference_card(card, model_id: str | None = None, provenance: dict[str, Any] | None = None):
    """The card as the backend should see it: no training-only architecture flags, provenance merged."""
    architecture = {k: v for k, v in card.architecture.items() if k != "deep_supervision"}
    return dataclasses.replace(card, id=model_id or card.id, architecture=architecture,
                               provenance={**card.provenance, **(provenance or {})})


def export_model(network: nn.Module, card, directory: str | Path) -> Path:
    """Write ``network`` (possibly DDP-wrapped, possibly deep-supervised) with ``card`` to ``directory``."""
    from tsfm_backend.checkpoints import save_model

    from tsfm_training.loop import unwrap

    bare = unwrap(network)
    return save_model(bare, inference_card(card), Path(directory))


def state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """The model weights in a training checkpoint (``last.pt``) or a plain state_dict file."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - any unpickling failure means an unusable file
        raise ValueError(f"{path}: not a readable torch checkpoint ({error})") from error
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: holds neither a training checkpoint nor a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def export_checkpoint(checkpoint: Path, card_path: Path, directory: Path, model_id: str | None = None) -> Path:
    """``tsfm-train export``: weights from ``checkpoint`` + the card at ``card_path`` -> a backend model folder."""
    from tsfm_backend.model_card import ModelCard
    from tsfm_backend.models import build_network

    card = ModelCard.read(card_path)
    card = inference_card(card, model_id, {"training_checkpoint": str(checkpoint)})
    network = build_network(card)
    state_dict = state_dict_from_file(Path(checkpoint))
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint} does not fit the architecture in {card_path}: {error}") from error
    return export_model(network, card, directory)
