"""The authors' released checkpoints and the model card that goes with them.

SAM-Med3D's training script saves ``{"epoch", "model_state_dict", "optimizer_state_dict", ...}``; the
released ``sam_med3d_turbo.pth`` is read by the authors' loaders as ``torch.load(path)["model_state_dict"]``
(MedIM's ``load_pretrained_weights(..., state_dict_key="model_state_dict")``), and its names are exactly
those of their ``Sam3D`` / ``SAM_Med3D`` network, which ``SamMed3D`` keeps. The preset is recognised by
comparing every key and shape; nothing is renamed.

Preprocessing constants are those of the authors' inference (``utils/infer_utils.py``,
``validate_paired_img_gt`` and ``data_preprocess``, uni-medical/SAM-Med3D @f3de1fa): resample to 1.5 mm
(``tio.Resample``, linear), reorient to RAS (``tio.ToCanonical``), a 128^3 crop around the object
(``tio.CropOrPad``, zero padding), z-score over the crop's voxels above 0 (``tio.ZNormalization(
masking_method=lambda x: x > 0)``), sigmoid > 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.preset_match import match_preset as match_preset_by_differences
from tsfm_backend.model_card import ModelCard

from .model import SamMed3D
from .presets import PRESETS

STATE_DICT_KEY = "model_state_dict"
# Keys only a SAM-Med3D state dict has together (PyMIC files share the top-level key, not these).
SIGNATURE_KEYS = ("image_encoder.patch_embed.proj.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                  "mask_decoder.iou_token.weight")
TARGET_SPACING_MM = 1.5
LICENSE = "Apache-2.0"
HOMEPAGE = "https://github.com/uni-medical/SAM-Med3D"


def is_official_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded torch file is ``{"model_state_dict": <SAM-Med3D weights>, ...}``."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(STATE_DICT_KEY), Mapping):
        return False
    return all(key in checkpoint[STATE_DICT_KEY] for key in SIGNATURE_KEYS)


def _expected_shapes(architecture: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        network = SamMed3D(**architecture)
    return {name: tuple(value.shape) for name, value in network.state_dict().items()}


def checkpoint_differences(state_dict: Mapping[str, Any], architecture: Mapping[str, Any]) -> list[str]:
    """What keeps ``state_dict`` from loading into ``architecture``: missing, unexpected, mis-shaped keys."""
    expected = _expected_shapes(architecture)
    found = {name: tuple(value.shape) for name, value in state_dict.items() if hasattr(value, "shape")}
    lines = [f"missing {name}" for name in expected if name not in found]
    lines += [f"unexpected {name}" for name in state_dict if name not in expected]
    lines += [f"{name} {found[name]} != {shape}" for name, shape in expected.items()
              if name in found and found[name] != shape]
    return lines


def match_preset(state_dict: Mapping[str, Any]) -> str:
    """Name of the preset whose keys and shapes the checkpoint has exactly; CheckpointError otherwise."""
    return match_preset_by_differences(PRESETS, lambda name: checkpoint_differences(state_dict, PRESETS[name]), "SAM-Med3D")


def sam_med3d_card(architecture: Mapping[str, Any], model_id: str | None = None, **provenance: Any) -> ModelCard:
    """The card of a SAM-Med3D model with the authors' inference constants (see the module docstring)."""
    crop = int(architecture["img_size"])
    return ModelCard(
        id=model_id or "sam-med3d-turbo",
        family="sam_med3d",
        architecture=dict(architecture),
        kind="promptable",
        classes={1: "object"},
        in_channels=int(architecture.get("in_chans", 1)),
        spacing=(TARGET_SPACING_MM,) * 3,
        axis_order="ras",
        normalization={"scheme": "zscore", "foreground_above": 0.0, "after_resampling": True},
        patch_size=(crop, crop, crop),
        output="sigmoid",
        license=LICENSE,
        provenance={"source": "SAM-Med3D (uni-medical), arXiv 2310.15161", "homepage": HOMEPAGE,
                    "data": "SA-Med3D-140K (22K volumes, 143K masks, 245 categories); turbo: fine-tuned on 44 "
                            "datasets", **provenance},
        description=f"SAM-Med3D promptable model for any structure: clicks in a {crop} voxel cube at "
                    f"{TARGET_SPACING_MM:g} mm around the object.",
    )


def convert_official_checkpoint(checkpoint: Mapping[str, Any],
                                 model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) from the authors' checkpoint dict, without building the network.

    Raises CheckpointError when the file is not one or its weights fit no preset.
    """
    if not is_official_checkpoint(checkpoint):
        raise CheckpointError(f"not a SAM-Med3D checkpoint: expected {{{STATE_DICT_KEY!r}: weights}} holding "
                              f"{', '.join(SIGNATURE_KEYS)}")
    state_dict = dict(checkpoint[STATE_DICT_KEY])
    preset = match_preset(state_dict)
    bookkeeping = {key: checkpoint[key] for key in ("epoch", "best_dice") if isinstance(checkpoint.get(key),
                                                                                           int | float)}
    return state_dict, sam_med3d_card(PRESETS[preset], model_id, preset=preset, **bookkeeping)
