"""The held-out objects a click model is scored on, grouped by kind, on each image's own grid.

Groups (the click benchmark and the interactive recipe's card use the same ones):

- ``sarcoma CT``, ``sarcoma MR``, ``sarcoma PET``: the tumour of each held-out patient in each modality
  (patients, not files, are held out, so no modality of theirs was trained on);
- ``organs (unseen classes)``: TotalSegmentator classes left out of training altogether, on both of its
  example CTs where present (its masks are model outputs, a silver standard).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tsfm_backend.grid_alignment import labels_on_image_grid
from tsfm_backend.image_io import read_volume
from tsfm_backend.volume import Volume

from tsfm_training.data.click_objects import STS_FILES, TOTALSEG_PAIRS, totalseg_class_names

SARCOMA_GROUPS = {"ct": "sarcoma CT", "mr_t1": "sarcoma MR", "pet": "sarcoma PET"}
ORGAN_GROUP = "organs (unseen classes)"
# Reference objects smaller than this (voxels of the image grid) are not scored: a click cannot be centred.
MIN_REFERENCE_VOXELS = 200


@dataclass
class HeldoutObject:
    """One object to click on: its image, (K, J, I) bool reference on the image grid and modality."""

    group: str
    name: str
    volume: Volume
    reference: np.ndarray
    modality: str


def sarcoma_objects(root: Path, patients: list[str], modalities: list[str]) -> list[HeldoutObject]:
    """The tumour of each patient in each modality (keys of ``STS_FILES``), image by image."""
    objects = []
    for key in modalities:
        image_file, mask_file, modality = STS_FILES[key]
        for patient in patients:
            volume = read_volume(root / patient / image_file)
            mask = labels_on_image_grid(read_volume(root / patient / mask_file), volume, f"{patient}/{mask_file}")
            objects.append(HeldoutObject(SARCOMA_GROUPS[key], f"{patient}/{key}", volume, mask > 0, modality))
    return objects


def organ_objects(root: Path, classes: list[str]) -> list[HeldoutObject]:
    """Each of ``classes`` on each TotalSegmentator example CT that holds at least ``MIN_REFERENCE_VOXELS``."""
    names = totalseg_class_names(root)
    ids = {v: k for k, v in names.items()}
    unknown = sorted(set(classes) - set(ids))
    if unknown:
        raise ValueError(f"classes {unknown} are not TotalSegmentator 'total' classes")
    objects = []
    for image_file, label_file in TOTALSEG_PAIRS:
        volume = read_volume(root / image_file)
        labels = labels_on_image_grid(read_volume(root / label_file), volume, label_file)
        for name in classes:
            reference = labels == ids[name]
            if int(reference.sum()) >= MIN_REFERENCE_VOXELS:
                objects.append(HeldoutObject(ORGAN_GROUP, f"{name}@{image_file.split('.')[0]}", volume,
                                             reference, "CT"))
    return objects


def heldout_objects(shared: Path, patients: list[str], modalities: list[str],
                    organ_classes: list[str]) -> list[HeldoutObject]:
    """Every held-out object under the shared data folder: sarcomas of ``patients``, then the organs."""
    return [*sarcoma_objects(shared / "sts", patients, modalities),
            *(organ_objects(shared / "totalseg", organ_classes) if organ_classes else [])]
