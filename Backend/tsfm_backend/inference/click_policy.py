"""Deterministic evaluation clicks: where a careful user clicks next, given the reference mask.

The protocol (used by the interactive benchmark and by training's click simulation):

1. the first click goes to the voxel of the reference farthest from the reference's border;
2. each next click goes to the voxel farthest from the border of the largest error region
   (connected component of ``prediction != reference``); a missed region gives a positive click,
   an extra region a negative one.

Distances are Euclidean in mm (the spacing is honoured), so anisotropic CT is clicked at the true
centre. Ties break on the first voxel in C order, which makes the policy fully deterministic.
Arrays are (K, J, I); spacing is (K, J, I) in mm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 26-connectivity: diagonal neighbours belong to the same error region.
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class PolicyClick:
    """One simulated click: a voxel (k, j, i) and whether it asks to add (positive) or remove."""

    point: tuple[int, int, int]
    positive: bool


def interior_distance(region: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """(K, J, I) float distance in mm from each voxel of ``region`` to the nearest voxel outside it.

    The array border counts as outside, so a region cut by the field of view is clicked away from the cut.
    """
    padded = np.pad(region.astype(bool), 1, constant_values=False)
    distance = ndimage.distance_transform_edt(padded, sampling=spacing)
    return distance[1:-1, 1:-1, 1:-1]


def deepest_voxel(region: np.ndarray, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """The voxel of ``region`` farthest from its border; raises ValueError for an empty region."""
    if not region.any():
        raise ValueError("cannot click inside an empty region")
    distance = interior_distance(region, spacing)
    flat = int(np.argmax(distance))
    k, j, i = np.unravel_index(flat, region.shape)
    return (int(k), int(j), int(i))


def first_click(reference: np.ndarray, spacing: tuple[float, float, float]) -> PolicyClick:
    """The positive click at the reference's deepest voxel."""
    return PolicyClick(deepest_voxel(reference > 0, spacing), True)


@dataclass(frozen=True)
class ErrorRegion:
    """One connected error region: ``labels == label`` is its mask; ``missed`` when the reference has it."""

    voxels: int
    missed: bool
    labels: np.ndarray
    label: int

    @property
    def mask(self) -> np.ndarray:
        return self.labels == self.label


def error_regions(prediction: np.ndarray, reference: np.ndarray) -> list[ErrorRegion]:
    """The connected error regions of ``prediction`` against ``reference``, largest first.

    Missed voxels (reference only) and extra voxels (prediction only) form separate regions: where a
    boundary is shifted they touch, and one merged region would put a "positive" click on an extra voxel.
    Equal sizes keep missed regions first, then the lower component label (the first in C order).
    """
    reference = reference > 0
    prediction = prediction > 0
    regions: list[ErrorRegion] = []
    for missed, errors in ((True, reference & ~prediction), (False, prediction & ~reference)):
        labels, count = ndimage.label(errors, structure=_CONNECTIVITY)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        regions += [ErrorRegion(int(sizes[label]), missed, labels, label) for label in range(1, count + 1)]
    return sorted(regions, key=lambda region: -region.voxels)


def largest_error_region(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """(mask of the largest connected error region, True if it was missed) or None when they agree
    (``error_regions`` says how regions are formed and ties broken)."""
    regions = error_regions(prediction, reference)
    if not regions:
        return None
    return regions[0].mask, regions[0].missed


def next_click(
    prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]
) -> PolicyClick | None:
    """The correction click for ``prediction`` against ``reference``; None when there is nothing to fix."""
    found = largest_error_region(prediction, reference)
    if found is None:
        return None
    region, missed = found
    return PolicyClick(deepest_voxel(region, spacing), missed)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty."""
    prediction = prediction > 0
    reference = reference > 0
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


@dataclass(frozen=True)
class ProtocolStep:
    """One click of the protocol: the click, Dice after it, and the seconds ``segment`` took."""

    click: PolicyClick
    dice: float
    seconds: float


def run_protocol(
    segment: Callable[[PolicyClick], np.ndarray],
    reference: np.ndarray,
    spacing: tuple[float, float, float],
    clicks: int,
) -> list[ProtocolStep]:
    """Play the protocol for ``clicks`` clicks against a segmenter.

    ``segment(click)`` applies one click and returns the whole current (K, J, I) mask. When the mask
    already equals the reference, the remaining steps repeat the last Dice without clicking.
    """
    reference = reference > 0
    steps: list[ProtocolStep] = []
    click: PolicyClick | None = first_click(reference, spacing)
    for _ in range(clicks):
        if click is None:
            steps.append(steps[-1])
            continue
        started = time.perf_counter()
        mask = segment(click)
        seconds = time.perf_counter() - started
        steps.append(ProtocolStep(click, dice(mask, reference), seconds))
        click = next_click(mask, reference, spacing)
    return steps
