"""Per-class clean-up of a label map: keep the largest connected component, fill enclosed holes.

Each class is processed inside its own bounding box, so the cost follows the organ's size rather
than the volume's. Connectivity is full (26-neighbourhood), as in nnU-Net's postprocessing.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Tight slices around the True voxels of a non-empty (K, J, I) mask."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a bool (K, J, I) mask (all False stays all False)."""
    if not mask.any():
        return mask.copy()
    box = _bounding_box(mask)
    image = sitk.GetImageFromArray(mask[box].astype(np.uint8))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(image, True), sortByObjectSize=True)
    result = np.zeros_like(mask)
    result[box] = sitk.GetArrayFromImage(components) == 1
    return result


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """A bool (K, J, I) mask with every cavity not connected to the box border filled."""
    if not mask.any():
        return mask.copy()
    box = _bounding_box(mask)
    # One voxel of margin so cavities touching the bounding box face stay open to the outside.
    padded = np.pad(mask[box], 1).astype(np.uint8)
    filled = (
        sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(padded), fullyConnected=False)) > 0
    )
    result = mask.copy()
    result[box] |= filled[1:-1, 1:-1, 1:-1]
    return result


def clean_labels(
    labels: np.ndarray, largest: bool = False, holes: bool = False, classes: list[int] | None = None
) -> np.ndarray:
    """Apply the chosen clean-ups class by class to a (K, J, I) label map; returns a new map.

    A filled hole takes the class that encloses it only where the voxel was background or that
    class, so filling never overwrites another organ.
    """
    if not (largest or holes):
        return labels
    out = labels.copy()
    present = [int(v) for v in np.unique(labels) if v != 0]
    for value in classes if classes is not None else present:
        if value not in present:
            continue
        mask = out == value
        if largest:
            kept = largest_component(mask)
            out[mask & ~kept] = 0
            mask = kept
        if holes:
            added = fill_holes(mask) & ~mask & (out == 0)
            out[added] = value
    return out
