"""Loading and saving model weights: one entry point for our format and every official format.

``load_model`` takes a model id (installed or bundled) or a path to any supported checkpoint, finds
the format, builds the network the weights belong to and loads them by name, strictly. No pickled
code ever runs: torch files are read with ``weights_only=True`` and nnU-Net's ``.pkl`` plan files
with a restricted unpickler.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tsfm_backend.formats import ours
from tsfm_backend.formats.errors import CheckpointError, UnknownModelError, UnsafePickleError
from tsfm_backend.formats.safe_unpickler import torch_load
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models import build_network
from tsfm_backend.store import install_atomically, install_dir, resolve_model

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "UnknownModelError",
    "UnsafePickleError",
    "import_model",
    "load_model",
    "read_checkpoint",
    "save_model",
]

# Formats recognised by their path: format name -> module with detect(path) and read(path, model_id).
PATH_FORMATS: dict[str, str] = {
    "tsfm": "tsfm_backend.formats.ours",
    "nnunet_v1": "tsfm_backend.formats.nnunet_v1",
}
# Torch files recognised by their top-level keys once read with weights_only=True: format name -> module
# with matches(checkpoint) and from_checkpoint(checkpoint, path, model_id).
CONTENT_FORMATS: dict[str, str] = {
    "nnunet_v2": "tsfm_backend.formats.nnunet_v2",
    # Before pymic: both keep their weights under "model_state_dict"; sam_med3d checks the names too.
    "sam_med3d": "tsfm_backend.formats.sam_med3d",
    "pymic": "tsfm_backend.formats.pymic",
    "suprem": "tsfm_backend.formats.suprem",
    "sam3d": "tsfm_backend.formats.sam3d",
    "vista3d": "tsfm_backend.formats.vista3d",
}
TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".model", ".bin")


@dataclass
class LoadedModel:
    """A network with its weights, in eval mode on its device, and the card that describes it."""

    network: nn.Module
    card: ModelCard


def read_checkpoint(
    path: str | os.PathLike, model_id: str | None = None, *, dataset: str | None = None
) -> tuple[dict[str, torch.Tensor], ModelCard, str]:
    """(state_dict on the CPU, card, format name) of any supported checkpoint; builds nothing.

    ``model_id`` names the card (default: derived from the file). ``dataset`` says which published
    model a 3DSAM-adapter file is (``kits``, ``lits``, ``pancreas``, ``colon``) when its name does not;
    other formats refuse it. Raises CheckpointError naming the file and what is wrong with it,
    UnsafePickleError when it asks to run code.
    """
    path = Path(path)
    options = {"dataset": dataset} if dataset is not None else {}
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir() and not ours.detect(path):
        path = _checkpoint_in_folder(path)
    for name, module_name in PATH_FORMATS.items():
        module = importlib.import_module(module_name)
        if module.detect(path):
            _check_options(module, name, options, path)
            state_dict, card = module.read(path, model_id)
            return state_dict, card, name
    if path.is_file() and (path.suffix in TORCH_SUFFIXES or path.name.endswith(".pth.tar")):
        checkpoint = torch_load(path)
        for name, module_name in CONTENT_FORMATS.items():
            module = importlib.import_module(module_name)
            if module.matches(checkpoint):
                _check_options(module, name, options, path)
                state_dict, card = module.from_checkpoint(checkpoint, path, model_id, **options)
                return state_dict, card, name
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        if path.suffix == ".model":
            raise CheckpointError(f"{path}: nnU-Net v1 checkpoint without its {path.name}.pkl beside it")
        raise CheckpointError(f"{path}: a torch file of no known checkpoint layout (top level: {keys})")
    formats = ", ".join([*PATH_FORMATS, *CONTENT_FORMATS])
    raise CheckpointError(f"{path}: not a checkpoint format this backend knows; supported: {formats}")


def _check_options(module, name: str, options: dict, path: Path) -> None:
    """Refuse reader options (``dataset``...) that the format of ``path`` does not take."""
    unknown = [key for key in options if key not in getattr(module, "OPTIONS", ())]
    if unknown:
        raise CheckpointError(
            f"{path}: a {name} checkpoint takes no {', '.join(unknown)} option (it is for 3DSAM-adapter files)"
        )


def _reference_network(card: ModelCard) -> nn.Module:
    """The card's network, for its weight names and shapes: built on the meta device (no memory, no
    initialisation) where the family allows it, else on the CPU (MONAI's SwinUNETR, for one, calls
    ``Tensor.item()`` while it is constructed, which the meta device cannot answer)."""
    try:
        with torch.device("meta"):
            return build_network(card)
    except (RuntimeError, NotImplementedError):
        return build_network(card)


def _checkpoint_in_folder(folder: Path) -> Path:
    """The one checkpoint in an nnU-Net results folder (``fold_*/checkpoint_final.pth`` or ``*.model``)."""
    candidates = sorted(
        {*folder.glob("checkpoint_final.pth"), *folder.glob("fold_*/checkpoint_final.pth"),
         *folder.glob("*.model"), *folder.glob("fold_*/*.model")}
    )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise CheckpointError(f"{folder}: no model.json/model.safetensors, checkpoint_final.pth or .model inside")
    names = ", ".join(str(c.relative_to(folder)) for c in candidates)
    raise CheckpointError(f"{folder}: several checkpoints ({names}); give the file to use")


def instantiate(card: ModelCard, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The card's network holding exactly ``state_dict`` (strict: every key present, no extra, same shapes).

    The network is first built on the meta device so large models are not randomly initialised only to
    be overwritten; families whose construction cannot run there are built on the CPU.
    """
    network = _reference_network(card)
    _check_state_dict(card, network, state_dict)
    network.load_state_dict(state_dict, strict=True, assign=True)
    if any(t.is_meta for t in list(network.parameters()) + list(network.buffers())):
        network = build_network(card)
        network.load_state_dict(state_dict, strict=True)
    return network.eval()


def _check_state_dict(card: ModelCard, network: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    expected = network.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(
            f"weights do not fit model {card.id!r} ({card.family}, {card.architecture}): " + "; ".join(parts)
        )


def load_model(path_or_id: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model by id (``$TSFM_HOME/models/<id>``, then bundled) or from any supported checkpoint path.

    Returns the network in eval mode on ``device`` with its card. Raises UnknownModelError for an id that
    is nowhere, CheckpointError for a file that cannot be read or does not fit its architecture.
    """
    path = resolve_model(path_or_id)
    state_dict, card, _ = read_checkpoint(path)
    network = instantiate(card, state_dict)
    if isinstance(device, str) and device == "auto":
        from tsfm_backend.device import resolve_device

        device = resolve_device("auto")
    return LoadedModel(network=network.to(torch.device(device)), card=card)


def save_model(network: nn.Module, card: ModelCard, directory: str | os.PathLike) -> Path:
    """Write ``network``'s weights and ``card`` in our format (``model.safetensors`` + ``model.json``).

    The weights are checked against the card's architecture first, so a saved model always loads.
    Returns the folder.
    """
    state_dict = network.state_dict()
    _check_state_dict(card, _reference_network(card), state_dict)
    return ours.write(state_dict, card, Path(directory))


def import_model(
    source: str | os.PathLike,
    model_id: str | None = None,
    *,
    license: str | None = None,
    provenance: dict | None = None,
    architecture: dict | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
) -> tuple[ModelCard, Path, str]:
    """Convert any supported checkpoint into our format under ``$TSFM_HOME/models/<id>``.

    The weights are checked against the architecture before anything is written. ``license`` and
    ``provenance`` (merged into the card's) record where the file came from. ``architecture`` overrides
    constructor kwargs the weights cannot tell (e.g. PCT-Net's ``input_size``, which also becomes the
    patch size). ``dataset`` names the published 3DSAM-adapter model (see ``read_checkpoint``).
    Returns (card, folder, source format). An installed id is refused unless ``overwrite``.
    """
    state_dict, card, fmt = read_checkpoint(source, model_id, dataset=dataset)
    if architecture:
        card.architecture = {**card.architecture, **architecture}
        if "input_size" in architecture:
            card.patch_size = tuple(int(s) for s in architecture["input_size"])
        card.validate()
    if license is not None:
        card.license = license
    card.provenance = {**card.provenance, **(provenance or {})}
    _check_state_dict(card, _reference_network(card), state_dict)
    folder = install_dir(card.id)
    if ours.detect(folder) and not overwrite:
        raise CheckpointError(f"model {card.id!r} is already installed in {folder}; choose another --id or --force")
    # Staged in the store and renamed into place: a killed import never lists a model that does not load.
    install_atomically(card.id, lambda staging: ours.write(state_dict, card, staging))
    return card, folder, fmt
