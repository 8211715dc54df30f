"""SuPreM checkpoints: ``{'net': state_dict, ...}`` saved from DDP.

UNet3D and SwinUNETR files hold the Universal Model (``module.backbone.<key>`` plus the CLIP-driven head:
``module.organ_embedding``, ``precls_conv``, ``GAP``, ``controller``, ``text_to_vision``); SegResNet files
the bare network (``module.<key>``). Prefixes are stripped and keys matched **by name**.

- A Universal Model file is a whole model: it is imported with its trained head and the class names of
  its class count (32: the Universal Model order of SuPreM's ``direct_inference``; 25 / 9: AbdomenAtlas
  1.1 / 1.0), one sigmoid per class, as the authors' inference reads it. Every head weight must be there.
- A bare file keeps its conv head when it has one; a backbone-only file (``*_backbone.pth``) gets a new
  two-class head, and the card says ``head_trained: false``: fine-tune it before segmenting.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from tsfm_backend.formats.errors import CheckpointError
from tsfm_backend.formats.nnunet_common import default_model_id, strip_prefix
from tsfm_backend.model_card import ModelCard
from tsfm_backend.models import suprem
from tsfm_backend.models.patch_merging import LEGACY as LEGACY_PATCH_MERGING

log = logging.getLogger(__name__)

TOP_LEVEL_KEY = "net"

# AbdomenAtlas 1.1, the 25 classes the SegResNet release was trained on
# (SuPreM supervised_pretraining/dataset/dataloader_bdmap.py, class_map_abdomenatlas_1_1).
ABDOMENATLAS_1_1 = (
    "aorta", "gall_bladder", "kidney_left", "kidney_right", "liver", "pancreas", "postcava", "spleen", "stomach",
    "adrenal_gland_left", "adrenal_gland_right", "bladder", "celiac_trunk", "colon", "duodenum", "esophagus",
    "femur_left", "femur_right", "hepatic_vessel", "intestine", "lung_left", "lung_right",
    "portal_vein_and_splenic_vein", "prostate", "rectum",
)
# AbdomenAtlas 1.0: its first 9 (class_map_abdomenatlas_1_0).
ABDOMENATLAS_1_0 = ABDOMENATLAS_1_1[:9]
# The 32 outputs of the released Universal Model files, in the order SuPreM's direct inference reads them
# (direct_inference/utils/utils.py: NUM_CLASS = 32, ORGAN_NAME_LOW; it spells class 25 "celiac_truck").
UNIVERSAL_32 = (
    "spleen", "kidney_right", "kidney_left", "gall_bladder", "esophagus", "liver", "stomach", "aorta", "postcava",
    "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right", "adrenal_gland_left", "duodenum",
    "hepatic_vessel", "lung_right", "lung_left", "colon", "intestine", "rectum", "bladder", "prostate",
    "femur_left", "femur_right", "celiac_trunk", "kidney_tumor", "liver_tumor", "pancreas_tumor",
    "hepatic_vessel_tumor", "lung_tumor", "colon_tumor", "kidney_cyst",
)
CLASS_LISTS = {len(names): names for names in (UNIVERSAL_32, ABDOMENATLAS_1_1, ABDOMENATLAS_1_0)}
# The authors' inference (direct_inference/dataset/dataloader_test.py:437-452) and pretraining
# (supervised_pretraining/dataset/dataloader_bdmap.py:173-186): Orientationd RAS, Spacingd 1.5 mm
# bilinear, then ScaleIntensityRanged(-175, 250 -> 0, 1, clip=True), so the window is applied on the
# resampled grid. Their sliding window (direct_inference/inference.py:48 and :177, overlap 0.75, mode
# "gaussian") strides a quarter of the 96^3 patch.
NORMALIZATION = {"scheme": "hu_window", "lower": -175.0, "upper": 250.0, "after_resampling": True}
SLIDING_WINDOW_STEP = 0.25
# MONAI SwinUNETR constructor defaults, recorded in the card only where a file differs.
SWIN_DEFAULTS = {"depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24], "window_size": 7}
# What the weights cannot tell: SuPreM's SwinUNETR is a copy of MONAI 0.9.0's (requirements.txt pins
# monai==0.9.0; supervised_pretraining/backbone/swinunetr.py:684-692 and direct_inference/model/
# SwinUNETR.py:684-692 merge patches as MONAI did before 1.5; tsfm_backend.models.patch_merging).
SWIN_RELEASE = {"patch_merging": LEGACY_PATCH_MERGING}


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


def swin_architecture(weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """SwinUNETR kwargs the weights tell: feature size, and depths, heads and window where not MONAI's."""
    depths, heads = [], []
    for level in range(1, 5):
        prefix = f"swinViT.layers{level}.0.blocks."
        depths.append(len({k[len(prefix):].split(".")[0] for k in weights if k.startswith(prefix)}))
        table = weights.get(prefix + "0.attn.relative_position_bias_table")
        if table is None:
            raise CheckpointError(f"SwinUNETR weights without {prefix}0.attn.relative_position_bias_table")
        heads.append(int(table.shape[1]))
    window = (round(table.shape[0] ** (1 / 3)) + 1) // 2
    found = {"depths": depths, "num_heads": heads, "window_size": window}
    architecture: dict[str, Any] = {"feature_size": int(weights["swinViT.patch_embed.proj.weight"].shape[0])}
    architecture.update({k: v for k, v in found.items() if v != SWIN_DEFAULTS[k]})
    if any(k.startswith("swinViT.layers1c.") for k in weights):
        architecture["use_v2"] = True
    return architecture


def _universal_architecture(backbone: str, head: dict[str, torch.Tensor], body: dict[str, Any]) -> dict[str, Any]:
    """The Universal Model head's kwargs: class count and encoding from the embedding, GroupNorm groups."""
    if backbone == "segresnet":
        raise CheckpointError("a SegResNet with a Universal Model head; SuPreM released SegResNet bare")
    if "organ_embedding" in head:
        num_classes, encoding = int(head["organ_embedding"].shape[0]), "word_embedding"
    elif "organ_embedding.weight" in head:
        num_classes, encoding = int(head["organ_embedding.weight"].shape[0]), "rand_embedding"
    else:
        raise CheckpointError("a Universal Model head without its organ_embedding")
    architecture: dict[str, Any] = {"num_classes": num_classes, "head": "universal"}
    if encoding != "word_embedding":
        architecture["encoding"] = encoding
    # The authors' GroupNorm(16, C); networks too small for 16 groups take the largest count that fits.
    channels = (64, 512) if backbone == "unet" else (body["feature_size"], 16 * body["feature_size"])
    groups = math.gcd(16, *channels)
    if groups != 16:
        architecture["head_groups"] = groups
    return architecture


def from_checkpoint(checkpoint: dict, path: Path, model_id: str | None = None) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """(state_dict, card) of a SuPreM checkpoint already read with ``torch_load``."""
    stored = strip_prefix(dict(checkpoint[TOP_LEVEL_KEY]))
    weights, outside = stored, {}
    if any(k.startswith("backbone.") for k in stored):
        weights = {k[len("backbone."):]: v for k, v in stored.items() if k.startswith("backbone.")}
        outside = {k: v for k, v in stored.items() if not k.startswith("backbone.")}
    try:
        backbone = _backbone_of(set(weights))
        body = {**swin_architecture(weights), **SWIN_RELEASE} if backbone == "swinunetr" else {}
        in_channels = _in_channels(backbone, weights)
        universal = "controller.weight" in outside
        if universal:
            head_kwargs = _universal_architecture(backbone, outside, body)
        else:
            heads = suprem.head_keys(backbone)
            head_weight = next((v for k, v in weights.items() if k.startswith(heads) and k.endswith("weight")), None)
            head_kwargs = {"num_classes": int(head_weight.shape[0]) if head_weight is not None else 2}
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    except KeyError as error:
        raise CheckpointError(f"{path}: SuPreM {backbone} weights without {error}") from error
    architecture = {"backbone": backbone, "in_channels": in_channels, **body, **head_kwargs}
    num_classes = architecture["num_classes"]
    torch.manual_seed(0)
    network = suprem.build(**architecture)
    expected = network.state_dict()
    found = {**weights, **outside} if universal else weights
    heads = () if universal else suprem.head_keys(backbone)
    missing = [k for k in expected if k not in found and not (heads and k.startswith(heads))]
    wrong = [f"{k} {tuple(found[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in found and found[k].shape != v.shape]
    if missing or wrong:
        shown = ", ".join((missing + wrong)[:5])
        more = f" (+{len(missing) + len(wrong) - 5} more)" if len(missing) + len(wrong) > 5 else ""
        kind = f"{backbone} Universal Model" if universal else backbone
        raise CheckpointError(f"{path}: SuPreM {kind} weights missing or of another shape: {shown}{more}")
    head_from_file = universal or all(k in weights for k in expected if k.startswith(heads))
    ignored = sorted(set(found) - set(expected)) + ([] if universal else sorted(outside))
    if ignored:
        log.info("%s: %d weights are not used (e.g. %s)", path, len(ignored), ignored[0])
    state_dict = {k: (found[k] if k in found else v) for k, v in expected.items()}
    if universal or (backbone == "segresnet" and head_from_file and num_classes == len(ABDOMENATLAS_1_1)):
        names = CLASS_LISTS.get(num_classes) or tuple(f"class_{k}" for k in range(1, num_classes + 1))
        classes, output = dict(enumerate(names, start=1)), "sigmoid"
    else:
        classes, output = {k: f"class_{k}" for k in range(1, num_classes)}, "softmax"
    if universal:
        description = (f"SuPreM {backbone} with its Universal Model head: {num_classes} abdominal classes, "
                       "one sigmoid each")
    elif head_from_file:
        description = f"SuPreM {backbone} pretrained on AbdomenAtlas 1.1, with the head of the checkpoint"
    else:
        description = f"SuPreM {backbone} backbone pretrained on AbdomenAtlas 1.1, with a new head to fine-tune"
    card = ModelCard(
        id=model_id or default_model_id(path.stem),
        family="suprem",
        architecture=architecture,
        classes=classes,
        in_channels=in_channels,
        spacing=(1.5, 1.5, 1.5),
        axis_order="ras",
        normalization=dict(NORMALIZATION),
        patch_size=(96, 96, 96),
        sliding_window_step=SLIDING_WINDOW_STEP,
        output=output,
        license="CC-BY-NC-ND-4.0",
        provenance={"format": "suprem", "source": str(path), "epoch": checkpoint.get("epoch"),
                    "head": ("from the checkpoint (Universal Model)" if universal else "from the checkpoint")
                    if head_from_file else "initialised (fine-tune before use)",
                    "unused_keys": len(ignored)},
        description=description,
        head_trained=head_from_file,
    )
    return state_dict, card


def _in_channels(backbone: str, weights: dict[str, torch.Tensor]) -> int:
    stem = {"unet": "down_tr64.ops.0.conv1.weight", "swinunetr": "swinViT.patch_embed.proj.weight",
            "segresnet": "convInit.conv.weight"}[backbone]
    return int(weights[stem].shape[1])
