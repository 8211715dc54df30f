"""PyMIC checkpoints (MIS-FM's ``pctnet_ct10k_volf.pt`` and ``fmunet_abk1k_volf.pt``).

A ``.pt`` dict ``{'iteration', 'valid_pred', 'model_state_dict', ['optimizer_state_dict']}``. The family
and channel sizes are read off the weight names and shapes. What the weights cannot tell (PCT-Net's
fixed ``input_size`` and ``resolution_mode``) defaults to the released CT10k configuration.

Intensities: both released models are CT models (CT10k, AbdomenCT-1K), and the authors' CT pipeline
for Volume Fusion weights clips to [-1000, 1000] HU and maps that window to [-1, 1] (PyMIC_examples
``seg_self_sup/lung/luna_preprocess.py`` for pretraining; ``NormalizeWithMinMax`` with those thresholds,
``pymic/transform/normalize.py``, for fine-tuning on CT). The per-image z-score of the MIS-FM demo
configs belongs to its MRI (left atrium) fine-tuning and is not used here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.nnunet_common import default_model_id, strip_prefix
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models import fmunet, pctnet

TOP_LEVEL_KEY = "model_state_dict"

# MIS-FM (LICENSE.txt) and PyMIC (LICENSE) are both under the Apache License 2.0.
LICENSE = "Apache-2.0"

# Clip to [-1000, 1000] HU, then 2 * (x + 1000) / 2000 - 1, as PyMIC's NormalizeWithMinMax does.
CT_NORMALIZATION: dict[str, Any] = {"scheme": "hu_window", "lower": -1000.0, "upper": 1000.0,
                                    "output_range": [-1.0, 1.0]}

# One entry per released model family: its pretraining data and the intensity convention of its weights.
RELEASES: dict[str, dict[str, Any]] = {
    "pctnet": {"data": "CT10k", "normalization": CT_NORMALIZATION},
    "fmunet": {"data": "AbdomenCT-1K", "normalization": CT_NORMALIZATION},
}


def matches(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and TOP_LEVEL_KEY in checkpoint


def _window(index: torch.Tensor) -> int:
    return round(index.shape[0] ** (1 / 3))


def pctnet_architecture(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """PCT-Net kwargs from the weights; input size and resolution mode from the CT10k release."""
    chns = [
        sd["embeddings.0.proj.weight"].shape[0],
        sd["embeddings.0.down1.conv.2.weight"].shape[0],
        sd["embeddings.0.down2.conv.2.weight"].shape[0],
        sd["pyramid_ct.down3.conv.2.weight"].shape[0],
        sd["pyramid_ct.down4.conv.2.weight"].shape[0],
    ]
    depths, heads, windows = [], [], []
    for level in ("e2", "e3", "e4"):
        prefix = f"pyramid_ct.convtrans_{level}.trans.blocks."
        depths.append(len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)}))
        heads.append(sd[prefix + "0.attn.relative_position_bias_table"].shape[1])
        windows.append(_window(sd[prefix + "0.attn.relative_position_index"]))
    architecture = {
        "in_chns": int(sd["embeddings.0.proj.weight"].shape[1]),
        "class_num": int(sd["pred_heads.0.out_conv0.conv.2.weight"].shape[0]),
    }
    found = {"feature_chns": [int(c) for c in chns], "depths": depths, "num_heads": [int(h) for h in heads],
             "window_sizes": windows}
    defaults = {"depths": [2, 2, 2], "num_heads": [4, 8, 16], "window_sizes": [6, 6, 6]}
    if found["feature_chns"] == pctnet.PRESETS["ct10k"]["feature_chns"] and all(found[k] == v for k, v in defaults.items()):
        architecture["preset"] = "ct10k"
    else:
        architecture.update(found, input_size=[64, 128, 128], resolution_mode=1)
    return architecture


def fmunet_architecture(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """FMUNet kwargs from the weights (channels, depth, res_mode from the in-plane kernels)."""
    chns = [int(sd[f"encoder.en_conv{i}.conv_list.0.3.weight"].shape[0]) for i in range(5)]
    depth = len({k.split(".")[3] for k in sd if k.startswith("encoder.en_conv0.conv_list.")})
    d0 = 2 if sd["project.weight"].shape[2] == 1 else 3
    d1 = 2 if sd["encoder.en_conv1.conv_list.0.3.weight"].shape[2] == 1 else 3
    res_mode = {(3, 3): 0, (2, 3): 1, (2, 2): 2}[(d0, d1)]
    architecture: dict[str, Any] = {
        "in_chns": int(sd["project.weight"].shape[1]),
        "class_num": int(sd["out_layers.0.2.weight"].shape[0]),
    }
    preset = fmunet.PRESETS["abk1k"]
    if chns == preset["feature_chns"] and depth == preset["depth"] and res_mode == preset["res_mode"]:
        architecture["preset"] = "abk1k"
    else:
        architecture.update(feature_chns=chns, depth=depth, res_mode=res_mode)
    return architecture


def from_checkpoint(checkpoint: dict, path: Path, model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of a PyMIC PCT-Net or FMUNet checkpoint already read with ``torch_load``."""
    sd = strip_prefix(dict(checkpoint[TOP_LEVEL_KEY]))
    if any(k.startswith("pyramid_ct.") for k in sd):
        family, architecture = "pctnet", pctnet_architecture(sd)
        input_size = architecture.get("input_size") or pctnet.PRESETS["ct10k"]["input_size"]
    elif "project.weight" in sd and any(k.startswith("encoder.en_conv0.") for k in sd):
        family, architecture = "fmunet", fmunet_architecture(sd)
        input_size = [64, 128, 128]
    else:
        raise CheckpointError(f"{path}: a PyMIC checkpoint of a network other than PCT-Net or FMUNet")
    class_num = architecture["class_num"]
    card = ModelCard(
        id=model_id or default_model_id(path.stem),
        family=family,
        architecture=architecture,
        # Volume Fusion pretraining predicts the fusion coefficient of every voxel: 1/K .. K/K.
        classes={k: f"fusion_level_{k}" for k in range(1, class_num)},
        in_channels=architecture["in_chns"],
        spacing=None,
        axis_order="kji",
        normalization=copy.deepcopy(RELEASES[family]["normalization"]),
        patch_size=tuple(input_size),
        output="softmax",
        license=LICENSE,
        provenance={"format": "pymic", "source": str(path), "iteration": checkpoint.get("iteration"),
                    "valid_pred": float(checkpoint["valid_pred"]) if "valid_pred" in checkpoint else None,
                    "pretraining_data": RELEASES[family]["data"]},
        description=f"MIS-FM {family} from a PyMIC checkpoint; a pretrained backbone to fine-tune",
    )
    return sd, card
