"""``GET /info/``: the served models described the way MONAI Label's Slicer plugin lists them.

The plugin fills its *Auto Segmentation* combo with models of type ``segmentation`` and its *SmartEdit
/ Deepgrow* combo with ``deepgrow`` ones; it sends back each model's ``config`` (first item of a list)
with every inference request, which is how a user sets our job options from the plugin's options
table. It refuses a server whose answer has a top-level ``config`` ("upgrade the monai server"), and
hides training, active learning and scoring when ``trainers``, ``strategies`` and ``scoring`` are empty.
"""

from __future__ import annotations

from typing import Any

from tsfm_backend.inference.interactive import serves_clicks
from tsfm_backend.model_card import ModelCard
from tsfm_backend.server.monailabel.results import label_names

# The job options (``schemas.JobOptions``) offered in the plugin's options table; the rest keep their defaults.
AUTOMATIC_CONFIG = {"fast": False, "tta": False, "largest_component": False, "fill_holes": False}
# An automatic model that also takes clicks (VISTA3D) is listed twice, the second time under this suffix
# as a deepgrow model: the plugin gives each model one type.
CLICKS_SUFFIX = "-clicks"


def model_entries(card: ModelCard) -> dict[str, dict[str, Any]]:
    """The ``models`` entries of one model: automatic ones are ``segmentation`` with ``{name: value}``
    labels; click models are ``deepgrow`` (one object per request, named by the plugin's segment)."""
    description = f"{card.description or card.id} ({card.family}, license {card.license})"
    clicks = {"type": "deepgrow", "labels": [], "dimension": 3, "description": description, "config": {}}
    if card.kind != "automatic":
        return {card.id: clicks}
    entries = {card.id: {"type": "segmentation", "labels": label_names(card.classes), "dimension": 3,
                         "description": description, "config": dict(AUTOMATIC_CONFIG)}}
    if serves_clicks(card):
        entries[card.id + CLICKS_SUFFIX] = clicks
    return entries


def app_info(cards: list[ModelCard], images: int, version: str) -> dict[str, Any]:
    """The whole ``/info/`` answer for the served models' ``cards`` (in the order the combos list them).

    ``labels`` merges every model's label names in order, as a MONAI Label app that declares none does;
    ``datastore`` counts the images the server holds (none is ever "completed": labels are not stored).
    """
    entries = {name: entry for card in cards for name, entry in model_entries(card).items()}
    merged: list[str] = []
    for entry in entries.values():
        merged += [name for name in entry["labels"] if name not in merged]
    return {
        "name": "tsfm-backend",
        "description": "3D segmentation with foundation models: automatic (segmentation) and click (deepgrow) models",
        "version": version,
        "labels": merged,
        "models": entries,
        "trainers": {},
        "strategies": {},
        "scoring": {},
        "train_stats": {},
        "datastore": {"total": images, "completed": 0},
    }
