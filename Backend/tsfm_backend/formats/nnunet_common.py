"""What nnU-Net v1 and v2 checkpoints share: STU-Net weights, plans-driven kernels, label names."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.models import stunet

log = logging.getLogger(__name__)


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a DataParallel/DDP ``module.`` prefix when every key has it."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


def ct_normalization(properties: dict[str, Any], std_key: str, scheme: str, source: Path) -> dict[str, Any]:
    """The card's ``ct_clip_zscore`` from nnU-Net's foreground intensity properties of channel 0.

    v1 names the standard deviation ``sd`` and v2 ``std``; ``scheme`` is the plans' name, for the error.
    """
    try:
        return {
            "scheme": "ct_clip_zscore",
            "lower": float(properties["percentile_00_5"]),
            "upper": float(properties["percentile_99_5"]),
            "mean": float(properties["mean"]),
            "std": float(properties[std_key]),
        }
    except KeyError as error:
        raise CheckpointError(f"{source}: {scheme} normalisation without intensity property {error}") from error


def five_pools(pools: list[list[int]]) -> list[list[int]]:
    """STU-Net trainers use exactly 5 pool ops: truncate, or pad with [1, 1, 1]."""
    pools = [[int(k) for k in p] for p in pools][:5]
    return pools + [[1, 1, 1]] * (5 - len(pools))


def six_kernels(kernels: list[list[int]] | None) -> list[list[int]]:
    """One conv kernel per STU-Net stage: truncate, or pad with 3x3x3."""
    kernels = [[int(k) for k in kernel] for kernel in (kernels or [])][:6]
    return kernels + [[3, 3, 3]] * (6 - len(kernels))


def stunet_architecture(
    state_dict: dict[str, torch.Tensor],
    trainer_name: str,
    pools: list[list[int]],
    conv_kernels: list[list[int]] | None,
    source: Path,
) -> dict[str, Any]:
    """STU-Net kwargs from the weights (sizes) and the plans (kernels); checks the trainer's preset."""
    try:
        architecture = stunet.architecture_from_state_dict(state_dict)
    except ValueError as error:
        raise CheckpointError(f"{source}: trainer {trainer_name!r}: {error}; only STU-Net networks load") from error
    expected = stunet.trainer_preset(trainer_name)
    if expected is not None and architecture.get("preset") != expected:
        log.warning(
            "%s: trainer %s implies STU-Net %s but the weights have depth/dims %s; using the weights",
            source, trainer_name, expected, architecture.get("preset") or (architecture["depth"], architecture["dims"]),
        )
    architecture["pool_op_kernel_sizes"] = five_pools(pools)
    kernels = six_kernels(conv_kernels)
    if kernels != [[3, 3, 3]] * 6:
        architecture["conv_kernel_sizes"] = kernels
    return architecture


def check_identity_transpose(transpose_forward: Any, source: Path) -> None:
    """Our arrays go to the network as stored (K, J, I); a plans file that permutes axes is refused."""
    if transpose_forward is not None and [int(a) for a in transpose_forward] != [0, 1, 2]:
        raise CheckpointError(
            f"{source}: plans transpose the axes ({list(transpose_forward)}); only [0, 1, 2] is supported"
        )


def label_names_near(path: Path, labels: list[int]) -> dict[int, str]:
    """Names for ``labels``: ``label_orders.json`` or a ``dataset.json`` beside the file or up to 3 folders up.

    Labels with no name found are called ``label_<n>``.
    """
    for folder in [path.parent, *list(path.parents)[1:4]]:
        for candidate in ("label_orders.json", "dataset.json"):
            file = folder / candidate
            if not file.is_file():
                continue
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as error:
                raise CheckpointError(f"{file}: not valid JSON: {error}") from error
            table = data.get("labels", data) if isinstance(data, dict) else {}
            names = _label_table(table)
            if names:
                return {label: names.get(label, f"label_{label}") for label in labels}
    return {label: f"label_{label}" for label in labels}


def _label_table(table: dict) -> dict[int, str]:
    """{label: name} from either ``{"1": "liver"}`` (v1) or ``{"liver": 1}`` (v2) tables."""
    names: dict[int, str] = {}
    for key, value in table.items():
        if str(key).isdigit() and isinstance(value, str):
            names[int(key)] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            names[value] = str(key)
    names.pop(0, None)
    return names


def default_model_id(*parts: str) -> str:
    """A model id made of the given words, with anything but letters, digits, '-', '_' and '.' replaced."""
    text = "-".join(part for part in parts if part)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "imported-model"
