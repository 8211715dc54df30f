"""MONAI dictionary transforms for training patches: pad, crop with foreground oversampling, augment.

Inputs are preprocessed arrays already on the network grid (``tsfm_training.data.preprocess``):
``image`` (C, Z, Y, X) float32 and ``label`` (1, Z, Y, X) integer. The crop centres on a foreground voxel
with probability ``foreground_ratio`` (nnU-Net oversamples 33 %), else on a background voxel. The
augmentations follow nnU-Net's defaults (rotation ±30°, scale 0.7–1.4, mirroring on every axis, noise,
brightness, gamma); each can be switched off or retuned from the config's ``augmentation`` mapping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

AUGMENTATION_DEFAULTS: dict[str, Any] = {
    "rotation_deg": 30.0,
    "rotation_prob": 0.2,
    "scale": [0.7, 1.4],
    "scale_prob": 0.2,
    "mirror_axes": [0, 1, 2],
    "noise_prob": 0.1,
    "noise_std": 0.1,
    "brightness_prob": 0.15,
    "brightness": 0.25,
    "gamma_prob": 0.3,
    "gamma": [0.7, 1.5],
}


def augmentation_settings(settings: dict[str, Any] | bool | None) -> dict[str, Any]:
    """Defaults merged with the config's values; ``False``/``none`` disables every augmentation."""
    if settings in (False, "none"):
        return {**AUGMENTATION_DEFAULTS, "rotation_prob": 0.0, "scale_prob": 0.0, "mirror_axes": [],
                "noise_prob": 0.0, "brightness_prob": 0.0, "gamma_prob": 0.0}
    settings = dict(settings or {}) if settings is not True else {}
    unknown = sorted(set(settings) - set(AUGMENTATION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown augmentation settings {unknown}; known: {sorted(AUGMENTATION_DEFAULTS)}")
    return {**AUGMENTATION_DEFAULTS, **settings}


def training_transforms(patch_size: Sequence[int], foreground_ratio: float = 0.33,
                        augmentation: dict[str, Any] | bool | None = None):
    """A ``monai.transforms.Compose`` mapping {image, label} to a one-element list of augmented patches."""
    from monai import transforms as mt

    if not 0.0 <= foreground_ratio <= 1.0:
        raise ValueError(f"foreground_ratio must be in [0, 1], got {foreground_ratio}")
    size = [int(s) for s in patch_size]
    aug = augmentation_settings(augmentation)
    keys = ["image", "label"]
    chain: list = [
        mt.SpatialPadd(keys, spatial_size=size, mode="constant"),
        mt.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=size, pos=foreground_ratio,
                                  neg=1.0 - foreground_ratio, num_samples=1, allow_smaller=False),
    ]
    if aug["rotation_prob"] > 0:
        angle = math.radians(aug["rotation_deg"])
        chain.append(mt.RandRotated(keys, range_x=angle, range_y=angle, range_z=angle, prob=aug["rotation_prob"],
                                    mode=("bilinear", "nearest"), padding_mode="zeros", keep_size=True))
    if aug["scale_prob"] > 0:
        low, high = aug["scale"]
        chain.append(mt.RandZoomd(keys, min_zoom=low, max_zoom=high, prob=aug["scale_prob"],
                                  mode=("trilinear", "nearest"), padding_mode="constant", keep_size=True))
    for axis in aug["mirror_axes"]:
        chain.append(mt.RandFlipd(keys, spatial_axis=int(axis), prob=0.5))
    if aug["noise_prob"] > 0:
        chain.append(mt.RandGaussianNoised("image", prob=aug["noise_prob"], std=aug["noise_std"]))
    if aug["brightness_prob"] > 0:
        chain.append(mt.RandScaleIntensityd("image", factors=aug["brightness"], prob=aug["brightness_prob"]))
    if aug["gamma_prob"] > 0:
        chain.append(mt.RandAdjustContrastd("image", gamma=tuple(aug["gamma"]), prob=aug["gamma_prob"]))
    return mt.Compose(chain)


def initial_patch_size(patch_size: Sequence[int], augmentation: dict[str, Any] | bool | None) -> tuple[int, ...]:
    """The block to crop before spatial augmentation so that rotating and zooming leaves no empty corners.

    As nnU-Net's ``get_patch_size``: the patch's corners rotated by the largest angle about each axis in
    turn, the largest extent per axis kept, divided by the smallest zoom. The patch itself when rotation
    and zoom are off.
    """
    aug = augmentation_settings(augmentation)
    size = np.asarray(patch_size, dtype=float)
    extent = size.copy()
    if aug["rotation_prob"] > 0:
        angle = math.radians(aug["rotation_deg"])
        c, s = math.cos(angle), math.sin(angle)
        corners = np.array([[a, b, d] for a in (-1, 1) for b in (-1, 1) for d in (-1, 1)]) * size / 2
        for axis in range(3):
            i, j = [k for k in range(3) if k != axis]
            rotated = corners.copy()
            rotated[:, i] = c * corners[:, i] - s * corners[:, j]
            rotated[:, j] = s * corners[:, i] + c * corners[:, j]
            extent = np.maximum(extent, 2 * np.abs(rotated).max(0))
    if aug["scale_prob"] > 0:
        extent = extent / min(aug["scale"])
    return tuple(int(math.ceil(e - 1e-6)) for e in extent)


def patch_augmentation(patch_size: Sequence[int], augmentation: dict[str, Any] | bool | None):
    """A MONAI ``Compose`` for a block of ``initial_patch_size``: the augmentations of
    ``training_transforms`` (without its crop), then a centre crop to ``patch_size``; None when there is
    nothing to do (no augmentation, block already the patch size)."""
    from monai import transforms as mt

    size = [int(s) for s in patch_size]
    chain = list(training_transforms(size, 0.0, augmentation).transforms[2:])  # without SpatialPadd and the crop
    if tuple(initial_patch_size(size, augmentation)) != tuple(size):
        # Crop right after the spatial transforms: flips and intensity changes then touch the patch only.
        spatial = [i for i, t in enumerate(chain) if isinstance(t, mt.RandRotated | mt.RandZoomd)]
        chain.insert(spatial[-1] + 1, mt.CenterSpatialCropd(["image", "label"], roi_size=size))
    return mt.Compose(chain) if chain else None
