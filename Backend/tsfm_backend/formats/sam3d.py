"""3DSAM-adapter checkpoints: ``{'encoder_dict', 'decoder_dict', 'feature_dict': [4 prompt encoders], ...}``.

The promptable family converts the official layout itself
(``tsfm_backend.models.sam3d.from_official_checkpoint``); this module only recognises the file, finds
which published model it is and hands it over, so the family is imported only when such a file is read.

The weights do not say which dataset a model was trained on, yet each has its own HU window and
intensity statistics. The authors save ``<snapshot_path>/<dataset>/{last,best}.pth.tar``
(``train.py``/``test.py`` with ``--data kits|pancreas|lits|colon``), so the dataset is the ``dataset``
option when given, else the one dataset name found in the file name or, failing that, its folder's
name. A file that names none (or several) is refused with the choices.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.nnunet_common import default_model_id
from tsfm_backend.model_card import ModelCard

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("encoder_dict", "decoder_dict", "feature_dict")
# Options this reader takes besides (checkpoint, path, model_id): see tsfm_backend.checkpoints.read_checkpoint.
OPTIONS = ("dataset",)


def matches(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and all(key in checkpoint for key in REQUIRED_KEYS)


def dataset_from_path(path: Path, datasets: tuple[str, ...]) -> str | None:
    """The one dataset named by a word of the file name (else of its folder name), e.g. ``kits`` in
    ``kits/last.pth.tar`` or ``lits_best.pth.tar``; a word may carry a suffix (``kits21``). None when
    no name, or more than one, is found."""
    for text in (path.name, path.parent.name):
        words = re.split(r"[^a-z0-9]+", text.lower())
        found = {name for name in datasets for word in words if word.startswith(name)}
        if len(found) == 1:
            return found.pop()
        if found:
            return None
    return None


def from_checkpoint(
    checkpoint: dict, path: Path, model_id: str | None = None, dataset: str | None = None
) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of an official 3DSAM-adapter checkpoint, via the sam3d family's converter.

    ``dataset`` (``kits``, ``lits``, ``pancreas``, ``colon``) names the published model; without it the
    path must name it. Raises CheckpointError listing the choices when neither does.
    """
    try:
        family = importlib.import_module("tsfm_backend.models.sam3d")
    except ImportError as error:
        raise CheckpointError(f"{path}: a 3DSAM-adapter checkpoint, but the sam3d model family is not available") from error
    known = tuple(family.DATASETS)
    detected = dataset_from_path(path, known)
    if dataset is None and detected is None:
        raise CheckpointError(
            f"{path}: a 3DSAM-adapter checkpoint, but neither its file nor its folder name says which dataset "
            "it was trained on, and each published model has its own intensity normalisation; give --dataset "
            f"with one of {', '.join(known)}"
        )
    if dataset is not None and detected is not None and dataset != detected:
        log.warning("%s: the path names %s but the dataset given is %s; using %s", path, detected, dataset, dataset)
    try:
        network, card = family.from_official_checkpoint(checkpoint, dataset=dataset or detected)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    card.id = model_id or (card.id if card.id else default_model_id(path.stem))
    card.provenance = {"format": "sam3d", "source": str(path), "dataset": dataset or detected,
                       "dataset_from": "option" if dataset else "path", **card.provenance}
    card.validate()
    return network.state_dict(), card
