"""SuPreM checkpoints: ``{'net': state_dict, ...}`` saved from DDP.

UNet3D and SwinUNETR files hold the Universal-model wrapper (``module.backbone.<key>`` plus CLIP-driven
heads we do not use); SegResNet files the bare network (``module.<key>``). Prefixes are stripped and
keys matched **by name** against our backbone. Backbone weights must all be present; a head the file
does not have (or has with another class count) is freshly initialised, and the card says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.nnunet_common import default_model_id, strip_prefix
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models import suprem

log = logging.getLogger(__name__)

TOP_LEVEL_KEY = "net"

# AbdomenAtlas 1.1, the 25 classes the SegResNet release was trained on.
ABDOMENATLAS_1_1 = (
    "aorta", "gall_bladder", "kidney_left", "kidney_right", "liver", "pancreas", "postcava", "spleen", "stomach",
    "adrenal_gland_left", "adrenal_gland_right", "bladder", "celiac_trunk", "colon", "duodenum", "esophagus",
    "femur_left", "femur_right", "hepatic_vessel", "intestine", "lung_left", "lung_right",
    "portal_vein_and_splenic_vein", "prostate", "rectum",
)


def matches(checkpoint: Any) -> bool:
    return isinstance(checkpoint, dict) and TOP_LEVEL_KEY in checkpoint and isinstance(checkpoint[TOP_LEVEL_KEY], dict)


def _backbone_of(keys: set[str]) -> str:
    if any(k.startswith("down_tr64.") for k in keys):
        return "unet"
    if any(k.startswith("swinViT.") for k in keys):
        return "swinunetr"
    if any(k.startswith("convInit.") for k in keys):
        return "segresnet"
    raise CheckpointError("a {'net': ...} checkpoint of no SuPreM backbone (no down_tr64/swinViT/convInit keys)")


def from_checkpoint(checkpoint: dict, path: Path, model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of a SuPreM checkpoint already read with ``torch_load``."""
    stored = strip_prefix(dict(checkpoint[TOP_LEVEL_KEY]))
    weights = stored
    if any(k.startswith("backbone.") for k in stored):
        weights = {k[len("backbone."):]: v for k, v in stored.items() if k.startswith("backbone.")}
    try:
        backbone = _backbone_of(set(weights))
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    heads = suprem.head_keys(backbone)
    head_weight = next((v for k, v in weights.items() if k.startswith(heads) and k.endswith("weight")), None)
    num_classes = int(head_weight.shape[0]) if head_weight is not None else 2
    torch.manual_seed(0)
    network = suprem.build(backbone, int(_in_channels(backbone, weights)), num_classes)
    expected = network.state_dict()
    missing = [k for k in expected if k not in weights and not k.startswith(heads)]
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or wrong:
        shown = ", ".join((missing + wrong)[:5])
        raise CheckpointError(f"{path}: SuPreM {backbone} weights missing or of another shape: {shown}")
    head_from_file = all(k in weights for k in expected if k.startswith(heads))
    outside_backbone = [k for k in stored if not k.startswith("backbone.")] if weights is not stored else []
    ignored = sorted(set(weights) - set(expected)) + sorted(outside_backbone)
    if ignored:
        log.info("%s: %d weights of the pretraining heads are not used (e.g. %s)", path, len(ignored), ignored[0])
    state_dict = {k: (weights[k] if k in weights else v) for k, v in expected.items()}
    if backbone == "segresnet" and head_from_file and num_classes == len(ABDOMENATLAS_1_1):
        classes, output = dict(enumerate(ABDOMENATLAS_1_1, start=1)), "sigmoid"
    else:
        classes, output = {k: f"class_{k}" for k in range(1, num_classes)}, "softmax"
    card = ModelCard(
        id=model_id or default_model_id(path.stem),
        family="suprem",
        architecture={"backbone": backbone, "in_channels": int(_in_channels(backbone, weights)),
                      "num_classes": num_classes},
        classes=classes,
        in_channels=int(_in_channels(backbone, weights)),
        spacing=(1.5, 1.5, 1.5),
        axis_order="ras",
        normalization={"scheme": "hu_window", "lower": -175.0, "upper": 250.0},
        patch_size=(96, 96, 96),
        output=output,
        license="CC-BY-NC-ND-4.0",
        provenance={"format": "suprem", "source": str(path), "epoch": checkpoint.get("epoch"),
                    "head": "from the checkpoint" if head_from_file else "initialised (fine-tune before use)",
                    "unused_keys": len(ignored)},
        description=f"SuPreM {backbone} pretrained on AbdomenAtlas 1.1",
    )
    return state_dict, card


def _in_channels(backbone: str, weights: dict[str, torch.Tensor]) -> int:
    stem = {"unet": "down_tr64.ops.0.conv1.weight", "swinunetr": "swinViT.patch_embed.proj.weight",
            "segresnet": "convInit.conv.weight"}[backbone]
    return int(weights[stem].shape[1])
