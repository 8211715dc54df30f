"""Reading the 3DSAM-adapter authors' checkpoints (``last.pth.tar`` / ``best.pth.tar``) with their key names.

The file is ``{"encoder_dict", "decoder_dict", "feature_dict": [4 prompt-encoder state_dicts], "epoch",
"best_val_loss", *optimizer states}``. Our ``Sam3D`` holds the three parts under ``image_encoder.``,
``mask_decoder.`` and ``prompt_encoder.`` with the authors' names below those prefixes, so conversion is a
prefix, plus two differences that are checked, not silently skipped:

- ``encoder_dict`` carries each shifted block's ``attn_mask`` (nWindows, w^3, w^3). It is a function of
  the grid, so ``Sam3D`` derives it instead of storing it; the file's masks must have the right keys and
  shapes and are then dropped.
- ``feature_dict`` holds four prompt encoders, of which the published model uses only the last (the one
  conditioning the final feature). All four must fit the architecture; only the last is kept.

The architecture is recognised by matching every key and shape against ``PRESETS``; a file that fits
none is refused with the differences to the closest preset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.preset_match import match_preset as match_preset_by_differences
from tsfm_backend.model_card import ModelCard

from .model import PROMPTED_LEVEL, Sam3D
from .presets import PRESETS

PARTS = ("encoder_dict", "decoder_dict", "feature_dict")

# Per published dataset, exactly as the authors' data loader sets them (3DSAM-adapter
# ``dataset/datasets.py``, ``_set_dataset_stat``): HU clip ``intensity_range``, global foreground
# ``global_mean`` / ``global_std`` and the target (``target_class``) the model segments.
DATASETS: dict[str, dict[str, Any]] = {
    "kits": {
        "lower": -54.0,
        "upper": 247.0,
        "mean": 59.53867,
        "std": 55.457336,
        "name": "kidney tumor",
        "data": "KiTS21",
    },
    "lits": {
        "lower": -48.0,
        "upper": 163.0,
        "mean": 60.057533,
        "std": 40.198017,
        "name": "liver tumor",
        "data": "LiTS17",
    },
    "pancreas": {
        "lower": -39.0,
        "upper": 204.0,
        "mean": 68.45214,
        "std": 63.422806,
        "name": "pancreas tumor",
        "data": "MSD Pancreas",
    },
    "colon": {
        "lower": -57.0,
        "upper": 175.0,
        "mean": 65.175035,
        "std": 32.651197,
        "name": "colon cancer",
        "data": "MSD Colon",
    },
}


def check_dataset(dataset: str | None) -> str:
    """``dataset`` when it names a published model; CheckpointError listing the choices otherwise."""
    if dataset not in DATASETS:
        choices = ", ".join(DATASETS)
        if dataset is None:
            raise CheckpointError(
                "which dataset is this 3DSAM-adapter model trained on? The weights cannot tell, and its "
                f"normalisation depends on it: give one of {choices} (tsfm-backend import --dataset NAME)"
            )
        raise CheckpointError(f"unknown 3DSAM-adapter dataset {dataset!r}; choose one of {choices}")
    return dataset


Shapes = dict[str, tuple[int, ...]]


def official_shapes(architecture: Mapping[str, Any]) -> dict[str, Shapes]:
    """Key -> shape of each part of an authors' checkpoint for ``architecture`` (built on the meta device)."""
    cached = _official_shapes(json.dumps(dict(architecture), sort_keys=True))
    return {part: dict(shapes) for part, shapes in cached.items()}


@lru_cache(maxsize=16)
def _official_shapes(architecture_json: str) -> dict[str, Shapes]:
    architecture = json.loads(architecture_json)
    with torch.device("meta"):
        network = Sam3D(**architecture)
    encoder = {k: tuple(v.shape) for k, v in network.image_encoder.state_dict().items()}
    for index, block in enumerate(network.image_encoder.blocks):
        if block.attn_mask is not None:
            encoder[f"blocks.{index}.attn_mask"] = tuple(block.attn_mask.shape)
    return {
        "encoder_dict": encoder,
        "decoder_dict": {k: tuple(v.shape) for k, v in network.mask_decoder.state_dict().items()},
        "feature_dict": {k: tuple(v.shape) for k, v in network.prompt_encoder.state_dict().items()},
    }


def _differences(label: str, expected: Shapes, found: Mapping[str, torch.Tensor]) -> list[str]:
    missing = [f"{label} missing {k}" for k in expected if k not in found]
    extra = [f"{label} unexpected {k}" for k in found if k not in expected]
    wrong = [
        f"{label} {k} {tuple(found[k].shape)} != {shape}"
        for k, shape in expected.items()
        if k in found and tuple(found[k].shape) != shape
    ]
    return missing + extra + wrong


def _check_layout(checkpoint: Mapping[str, Any]) -> list[Mapping[str, torch.Tensor]]:
    for part in PARTS:
        if part not in checkpoint:
            raise CheckpointError(
                f"3DSAM-adapter checkpoint has no {part!r} (keys: {sorted(checkpoint)[:8]})"
            )
    features = checkpoint["feature_dict"]
    if not isinstance(features, (list, tuple)) or len(features) != 4:
        raise CheckpointError(
            "3DSAM-adapter checkpoint: 'feature_dict' must be a list of 4 prompt-encoder state_dicts"
        )
    return list(features)


def checkpoint_differences(checkpoint: Mapping[str, Any], architecture: Mapping[str, Any]) -> list[str]:
    """Every key or shape of the authors' checkpoint that does not fit ``architecture`` (empty: it fits)."""
    features = _check_layout(checkpoint)
    expected = official_shapes(architecture)
    found = [
        ("encoder_dict", expected["encoder_dict"], checkpoint["encoder_dict"]),
        ("decoder_dict", expected["decoder_dict"], checkpoint["decoder_dict"]),
    ] + [(f"feature_dict[{i}]", expected["feature_dict"], f) for i, f in enumerate(features)]
    return [line for label, shapes, state in found for line in _differences(label, shapes, state)]


def match_preset(checkpoint: Mapping[str, Any]) -> str:
    """Name of the preset whose keys and shapes the checkpoint has exactly; CheckpointError otherwise."""
    return match_preset_by_differences(PRESETS, lambda name: checkpoint_differences(checkpoint, PRESETS[name]), "3DSAM-adapter")


def _scalar(value: Any) -> Any:
    """A JSON-friendly copy of a checkpoint's bookkeeping value (tensors and numpy scalars unwrapped)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    try:
        return value.item()
    except (AttributeError, ValueError, RuntimeError):
        return str(value)


def sam3d_card(
    architecture: Mapping[str, Any], dataset: str | None, model_id: str | None = None, **provenance: Any
) -> ModelCard:
    """The card of a 3DSAM-adapter model: 1 mm crops, the dataset's HU clip and global z-score, 3 channels.

    ``dataset`` is one of ``DATASETS`` (``kits``, ``lits``, ``pancreas``, ``colon``); there is no default,
    since each published model has its own intensity statistics. Crop axes (A0, A1, A2) are the array
    axes (K, J, I), A0 = the slice axis, as the authors' loader gives them.
    """
    stats = DATASETS[check_dataset(dataset)]
    crop = int(architecture["crop_size"])
    return ModelCard(
        id=model_id or f"sam3d-{dataset}",
        family="sam3d",
        architecture=dict(architecture),
        kind="promptable",
        classes={1: stats["name"]},
        in_channels=int(architecture.get("in_chans", 3)),
        spacing=(1.0, 1.0, 1.0),
        axis_order="kji",
        normalization={
            "scheme": "ct_clip_zscore",
            "lower": stats["lower"],
            "upper": stats["upper"],
            "mean": stats["mean"],
            "std": stats["std"],
        },
        patch_size=(crop, crop, crop),
        output="softmax",
        license="unspecified (the authors' repository states no license)",
        provenance={
            "source": "3DSAM-adapter (med-air), arXiv 2306.13465",
            "data": stats["data"],
            **provenance,
        },
        description=f"3DSAM-adapter promptable {stats['name']} model: one click, a {crop} mm cube around it.",
        procedure="published",
    )


def is_official_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded torch file has the authors' top-level layout (contents are checked on conversion)."""
    return isinstance(checkpoint, Mapping) and all(part in checkpoint for part in PARTS)


def convert_official_checkpoint(
    checkpoint: Mapping[str, Any], *, dataset: str | None, model_id: str | None = None
) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(``Sam3D`` state_dict, card) from an authors' checkpoint dict, without building the network.

    Every part is checked key by key against the matching preset first (see ``match_preset``); the
    derived ``attn_mask`` entries and the three unused prompt encoders are then dropped.
    """
    preset = match_preset(checkpoint)
    state_dict = {
        **{
            f"image_encoder.{k}": v
            for k, v in checkpoint["encoder_dict"].items()
            if not k.endswith(".attn_mask")
        },
        **{f"prompt_encoder.{k}": v for k, v in checkpoint["feature_dict"][PROMPTED_LEVEL].items()},
        **{f"mask_decoder.{k}": v for k, v in checkpoint["decoder_dict"].items()},
    }
    card = sam3d_card(
        PRESETS[preset],
        dataset,
        model_id,
        preset=preset,
        epoch=_scalar(checkpoint.get("epoch")),
        best_val_loss=_scalar(checkpoint.get("best_val_loss")),
    )
    return state_dict, card


def from_official_checkpoint(
    checkpoint: Mapping[str, Any], *, dataset: str | None, model_id: str | None = None
) -> tuple[nn.Module, ModelCard]:
    """Build ``Sam3D`` from an authors' checkpoint dict (as ``torch.load(weights_only=True)`` returns it).

    Args:
        checkpoint: ``{"encoder_dict", "decoder_dict", "feature_dict": [4], ...}``, the authors' key names.
        dataset: which published model it is (``kits``, ``lits``, ``pancreas``, ``colon``): sets the card's
            intensity normalisation and class name. Required: None raises CheckpointError.
        model_id: card id; defaults to ``sam3d-<dataset>``.
    Returns:
        (network in eval mode on the CPU, card).
    Raises:
        CheckpointError naming missing, unexpected or mis-shaped keys.
    """
    state_dict, card = convert_official_checkpoint(checkpoint, dataset=dataset, model_id=model_id)
    network = Sam3D(**card.architecture)
    network.load_state_dict(state_dict, strict=True)
    return network.eval(), card
