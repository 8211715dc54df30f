"""Which modality an image is (CT, MR, PET) and the intensity window a modality-aware card gives it.

A card whose normalisation scheme is ``by_modality`` holds one entry per modality::

    {"scheme": "by_modality",
     "CT":  {"scheme": "hu_window", "lower": -250.0, "upper": 350.0},
     "MR":  {"scheme": "percentile_window", "lower_percentile": 0.5, "upper_percentile": 99.5},
     "PET": {"scheme": "percentile_window", "lower_percentile": 0.5, "upper_percentile": 99.5}}

``resolve_normalization`` turns it into a fixed ``hu_window`` for one image: CT keeps its HU window
(Hounsfield units mean the same in every scanner), MR and PET get the window between two percentiles
of the whole image, because their values have no fixed unit (MR) or depend on dose and uptake time
(PET). The window is computed once per image, so every region of interest of a session, and every
training crop of a volume, sees the same mapping.

The modality comes from the caller (a session request's ``modality``, which Slicer fills from the
volume's DICOM Modality tag) or, when not given, from the image itself (``detect_modality``): CT holds
air and fat below -500 HU, which MR and PET never have.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODALITIES = ("CT", "MR", "PET")
# DICOM Modality (0008,0060) values that name the same thing as ours.
DICOM_MODALITIES = {"CT": "CT", "MR": "MR", "PT": "PET", "PET": "PET"}
# CT: a share of voxels this low in HU (air, lung) says the image is CT.
CT_AIR_HU = -500.0
CT_AIR_FRACTION = 0.001
# Percentiles are taken on every n-th voxel along each axis: exact enough, and bounded in cost.
PERCENTILE_STRIDE = 2
PERCENTILE_MAX_VOXELS = 4_000_000


class ModalityError(ValueError):
    """An unknown modality name, or a card whose modality table lacks the image's modality."""


def canonical_modality(name: str) -> str:
    """``CT``, ``MR`` or ``PET`` for a name as users and DICOM write it (``ct``, ``PT``, ``mri``...)."""
    key = str(name).strip().upper()
    key = {"MRI": "MR", "PT": "PET"}.get(key, key)
    if key not in MODALITIES:
        raise ModalityError(f"unknown modality {name!r}; use one of {', '.join(MODALITIES)} (DICOM 'PT' is PET)")
    return key


def _sample(array: np.ndarray) -> np.ndarray:
    """A strided sample of the voxels, at most about ``PERCENTILE_MAX_VOXELS`` of them."""
    stride = PERCENTILE_STRIDE
    while array.size / stride ** 3 > PERCENTILE_MAX_VOXELS:
        stride += 1
    return np.asarray(array[::stride, ::stride, ::stride], dtype=np.float32).ravel()


def detect_modality(array: np.ndarray) -> str:
    """``CT`` when at least 0.1 % of the voxels lie below -500 (air or lung in HU), else ``MR``.

    MR and PET cannot be told apart from their values alone, and a ``by_modality`` card normalises
    both the same way; pass the modality explicitly to record ``PET``.
    """
    sample = _sample(array)
    if sample.size and float(np.mean(sample < CT_AIR_HU)) >= CT_AIR_FRACTION:
        return "CT"
    return "MR"


def percentile_window(array: np.ndarray, lower_percentile: float, upper_percentile: float) -> tuple[float, float]:
    """(lower, upper) intensity at two percentiles of the image; never an empty window."""
    sample = _sample(array)
    lower, upper = (float(v) for v in np.percentile(sample, [lower_percentile, upper_percentile]))
    if upper <= lower:  # a flat image: any non-empty window maps it to 0
        upper = lower + 1.0
    return lower, upper


def resolve_normalization(normalization: dict[str, Any], array: np.ndarray, modality: str | None) -> dict[str, Any]:
    """The concrete normalisation of ``array`` (K, J, I) under a card's ``normalization``.

    Cards with another scheme than ``by_modality`` are returned unchanged. For ``by_modality`` the
    modality is canonicalised (or detected when None) and its entry resolved: ``percentile_window``
    becomes a ``hu_window`` over this image's percentiles. The result also names the ``modality``.
    """
    if normalization.get("scheme") != "by_modality":
        return dict(normalization)
    modality = canonical_modality(modality) if modality else detect_modality(array)
    entry = normalization.get(modality)
    if not isinstance(entry, dict):
        known = [m for m in MODALITIES if isinstance(normalization.get(m), dict)]
        raise ModalityError(f"the model normalises {', '.join(known)} images, not {modality}")
    if entry.get("scheme") == "percentile_window":
        lower, upper = percentile_window(array, float(entry.get("lower_percentile", 0.5)),
                                         float(entry.get("upper_percentile", 99.5)))
        return {"scheme": "hu_window", "lower": lower, "upper": upper, "modality": modality}
    return {**entry, "modality": modality}
