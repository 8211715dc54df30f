"""nnU-Net v1 checkpoints: ``<name>.model`` (torch dict, weights under ``state_dict``) with ``<name>.model.pkl``.

The ``.model.pkl`` holds ``{'init', 'name' (trainer class), 'plans'}`` and is read with the restricted
unpickler. The trainer name gives the STU-Net size, the plans give classes, patch, spacing, pool kernels
and normalisation. This is the format of STU-Net's released TotalSegmentator models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.nnunet_common import (
    check_identity_transpose,
    ct_normalization,
    default_model_id,
    label_names_near,
    strip_prefix,
    stunet_architecture,
)
from tsfm_backend.formats.safe_unpickler import load_plans_pickle, torch_load
from tsfm_backend.model_card import ModelCard


def _weights_and_companion(path: Path) -> tuple[Path, Path]:
    if path.name.endswith(".model.pkl"):
        return path.with_name(path.name[: -len(".pkl")]), path
    return path, path.with_name(path.name + ".pkl")


def detect(path: Path) -> bool:
    """A ``.model`` file with its ``.model.pkl`` beside it (either one may be given)."""
    if not path.is_file():
        return False
    weights, companion = _weights_and_companion(path)
    return weights.name.endswith(".model") and weights.is_file() and companion.is_file()


def normalization_from_plans(plans: dict[str, Any], source: Path) -> dict[str, Any]:
    """The card's normalisation for nnU-Net v1 ``normalization_schemes`` (one scheme for all channels)."""
    schemes = {str(s) for s in dict(plans.get("normalization_schemes") or {0: "nonCT"}).values()}
    if len(schemes) != 1:
        raise CheckpointError(f"{source}: channels use different normalisations {sorted(schemes)}; not supported")
    scheme = schemes.pop()
    if scheme == "CT":
        properties = (plans.get("dataset_properties") or {}).get("intensityproperties") or {}
        return ct_normalization(properties.get(0) or {}, "sd", "CT", source)
    if scheme == "noNorm":
        return {"scheme": "none"}
    # 'nonCT' and every other scheme of nnU-Net v1 is a per-image z-score.
    return {"scheme": "zscore"}


def read(path: Path, model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of an nnU-Net v1 STU-Net checkpoint."""
    weights_path, companion = _weights_and_companion(path)
    info = load_plans_pickle(companion)
    if not isinstance(info, dict) or "plans" not in info or "name" not in info:
        raise CheckpointError(f"{companion}: not an nnU-Net v1 .model.pkl (needs 'name' and 'plans')")
    plans, trainer = info["plans"], str(info["name"])
    checkpoint = torch_load(weights_path)
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{weights_path}: no 'state_dict' in this nnU-Net v1 checkpoint")
    state_dict = strip_prefix(state_dict)

    stages = plans.get("plans_per_stage") or {}
    init = info.get("init") or ()
    stage_index = int(init[5]) if len(init) > 5 and int(init[5]) in stages else max(stages, default=0)
    if stage_index not in stages:
        raise CheckpointError(f"{companion}: plans have no plans_per_stage")
    stage = stages[stage_index]
    check_identity_transpose(plans.get("transpose_forward"), companion)
    architecture = stunet_architecture(
        state_dict, trainer, stage["pool_op_kernel_sizes"], stage.get("conv_kernel_sizes"), companion
    )
    num_classes = int(plans["num_classes"]) + 1
    if architecture["num_classes"] != num_classes:
        raise CheckpointError(
            f"{weights_path}: the weights have {architecture['num_classes']} outputs but the plans "
            f"{num_classes} (num_classes {plans['num_classes']} + background)"
        )
    labels = [int(label) for label in plans.get("all_classes") or range(1, num_classes)]
    card = ModelCard(
        id=model_id or default_model_id(weights_path.name.removesuffix(".model")),
        family="stunet",
        architecture=architecture,
        classes=label_names_near(weights_path, labels),
        in_channels=architecture["input_channels"],
        spacing=tuple(float(s) for s in np.asarray(stage["current_spacing"]).tolist()),
        axis_order="kji",
        normalization=normalization_from_plans(plans, companion),
        patch_size=tuple(int(p) for p in np.asarray(stage["patch_size"]).tolist()),
        output="softmax",
        provenance={
            "format": "nnunet_v1",
            "source": str(weights_path),
            "trainer": trainer,
            "epoch": int(checkpoint.get("epoch", -1)) if isinstance(checkpoint.get("epoch", -1), int) else -1,
        },
        description=f"STU-Net from nnU-Net v1 trainer {trainer}",
    )
    return state_dict, card
