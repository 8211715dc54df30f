"""Our own format: a folder with ``model.safetensors`` (weights) and ``model.json`` (the model card).

safetensors holds raw tensors only, so reading it can never run code; the card says how to build the
network the tensors belong to.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.model_card import ModelCard, ModelCardError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"


def detect(path: Path) -> bool:
    """True for a folder holding both files (or one of the two files itself)."""
    if path.is_file() and path.name in (WEIGHTS_FILE, CARD_FILE):
        path = path.parent
    return path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / CARD_FILE).is_file()


def read(path: Path, model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict on the CPU, card) of a model folder; ``model_id`` renames the card."""
    folder = path.parent if path.is_file() else path
    try:
        card = ModelCard.read(folder / CARD_FILE)
    except ModelCardError as error:
        raise CheckpointError(str(error)) from error
    except FileNotFoundError as error:
        raise CheckpointError(f"{folder}: no {CARD_FILE} (model card) beside the weights") from error
    try:
        state_dict = load_file(folder / WEIGHTS_FILE, device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: not a readable safetensors file: {error}") from error
    if model_id is not None:
        card.id = model_id
        card.validate()
    return state_dict, card


def write(state_dict: dict[str, torch.Tensor], card: ModelCard, directory: Path) -> Path:
    """Write the two files into ``directory`` (created if needed); returns the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    # Write to temporary names first so a crash never leaves a half-written model that looks complete.
    weights_tmp = directory / (WEIGHTS_FILE + ".partial")
    card_tmp = directory / (CARD_FILE + ".partial")
    save_file(tensors, str(weights_tmp), metadata={"format": "pt", "model_id": card.id})
    card.write(card_tmp)
    weights_tmp.replace(directory / WEIGHTS_FILE)
    card_tmp.replace(directory / CARD_FILE)
    return directory
