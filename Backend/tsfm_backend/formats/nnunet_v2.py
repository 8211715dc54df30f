"""nnU-Net v2 checkpoints: ``checkpoint_final.pth`` (weights under ``network_weights``) with the
``plans.json`` and ``dataset.json`` of its results folder (``<trainer>__<plans>__<config>/``).

This is what fine-tuning STU-Net with nnU-Net v2 produces. The plans give patch, spacing, pool kernels
and normalisation; ``dataset.json`` the label names. When the JSON files are not beside the checkpoint,
the copies nnU-Net stores in the checkpoint's ``init_args`` are used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.nnunet_common import (
    check_identity_transpose,
    ct_normalization,
    default_model_id,
    strip_prefix,
    stunet_architecture,
)
from tsfm_backend.model_card import ModelCard

TOP_LEVEL_KEY = "network_weights"


def matches(checkpoint: Any) -> bool:
    """A torch dict as nnU-Net v2's trainer saves it."""
    return isinstance(checkpoint, dict) and TOP_LEVEL_KEY in checkpoint


def _json_near(path: Path, name: str) -> dict | None:
    for folder in (path.parent, path.parent.parent):
        file = folder / name
        if file.is_file():
            try:
                return json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise CheckpointError(f"{file}: not valid JSON: {error}") from error
    return None


def _configuration(plans: dict, name: str, source: Path) -> dict:
    """A configuration of the plans with its ``inherits_from`` chain resolved."""
    configurations = plans.get("configurations") or {}
    if name not in configurations:
        raise CheckpointError(f"{source}: plans have no configuration {name!r} (have {sorted(configurations)})")
    config = dict(configurations[name])
    parent = config.pop("inherits_from", None)
    if parent:
        config = {**_configuration(plans, parent, source), **config}
    return config


def _pools(config: dict) -> list[list[int]]:
    """Pool kernels after the first (always [1, 1, 1]) stage, from old- or new-style plans."""
    if "pool_op_kernel_sizes" in config:
        pools = config["pool_op_kernel_sizes"]
    else:
        pools = config.get("architecture", {}).get("arch_kwargs", {}).get("strides")
    if not pools:
        raise CheckpointError("plans configuration has neither pool_op_kernel_sizes nor architecture strides")
    return [list(p) if isinstance(p, (list, tuple)) else [p] * 3 for p in pools][1:]


def normalization_from_plans(plans: dict, config: dict, source: Path) -> dict[str, Any]:
    """The card's normalisation for nnU-Net v2 ``normalization_schemes`` (one scheme for all channels)."""
    schemes = set(config.get("normalization_schemes") or ["ZScoreNormalization"])
    if len(schemes) != 1:
        raise CheckpointError(f"{source}: channels use different normalisations {sorted(schemes)}; not supported")
    scheme = schemes.pop()
    if scheme == "CTNormalization":
        properties = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0") or {}
        return ct_normalization(properties, "std", "CTNormalization", source)
    if scheme == "ZScoreNormalization":
        return {"scheme": "zscore"}
    if scheme == "NoNormalization":
        return {"scheme": "none"}
    raise CheckpointError(f"{source}: normalisation {scheme!r} is not supported")


def _classes(dataset: dict, source: Path) -> dict[int, str]:
    labels = dataset.get("labels") or {}
    classes = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise CheckpointError(f"{source}: region-based label {name!r}: {value!r} is not supported")
        if value != 0:
            classes[value] = str(name)
    return classes


def from_checkpoint(checkpoint: dict, path: Path, model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of an nnU-Net v2 STU-Net checkpoint already read with ``torch_load``."""
    init_args = checkpoint.get("init_args") or {}
    plans = _json_near(path, "plans.json") or init_args.get("plans")
    dataset = _json_near(path, "dataset.json") or init_args.get("dataset_json")
    if not isinstance(plans, dict) or not isinstance(dataset, dict):
        raise CheckpointError(
            f"{path}: nnU-Net v2 checkpoint needs plans.json and dataset.json beside it or one folder up"
        )
    configuration_name = str(init_args.get("configuration", "3d_fullres"))
    config = _configuration(plans, configuration_name, path)
    trainer = str(checkpoint.get("trainer_name", "unknown"))
    state_dict = strip_prefix(dict(checkpoint[TOP_LEVEL_KEY]))
    check_identity_transpose(plans.get("transpose_forward"), path)
    architecture = stunet_architecture(state_dict, trainer, _pools(config), None, path)
    classes = _classes(dataset, path)
    if architecture["num_classes"] != max(classes, default=0) + 1:
        raise CheckpointError(
            f"{path}: the weights have {architecture['num_classes']} outputs but dataset.json has labels "
            f"up to {max(classes, default=0)}"
        )
    dataset_name = str(plans.get("dataset_name", ""))
    card = ModelCard(
        id=model_id or default_model_id(dataset_name, trainer, f"fold{init_args.get('fold', '')}"),
        family="stunet",
        architecture=architecture,
        classes=classes,
        in_channels=architecture["input_channels"],
        spacing=tuple(float(s) for s in config["spacing"]),
        axis_order="kji",
        normalization=normalization_from_plans(plans, config, path),
        patch_size=tuple(int(p) for p in config["patch_size"]),
        output="softmax",
        provenance={
            "format": "nnunet_v2",
            "source": str(path),
            "trainer": trainer,
            "dataset": dataset_name,
            "configuration": configuration_name,
            "epoch": int(checkpoint.get("current_epoch", -1)),
        },
        description=f"STU-Net from nnU-Net v2 trainer {trainer}" + (f" on {dataset_name}" if dataset_name else ""),
    )
    return state_dict, card
