"""The measurement behind the module's self-test: one click at the heart of a reference mask -> Dice.

Kept Qt-free so that pytest runs the very same steps on a headless scene that Slicer's self-test runs
in the application.
"""

from __future__ import annotations

import numpy as np
import slicer

from .volumes import image_geometry


def deepest_voxel(mask: np.ndarray, spacing_kji: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[int, int, int]:
    """(k, j, i) of the voxel of ``mask`` (K, J, I) farthest (in mm) from its border.

    The array's edge counts as border. Uses scipy's Euclidean distance transform where Slicer's Python
    has scipy (the click the backend's evaluation protocol makes); otherwise repeated 6-neighbour
    erosion, which ignores anisotropic spacing.
    """
    current = np.asarray(mask, bool)
    if not current.any():
        raise ValueError("the reference mask is empty")
    try:
        from scipy import ndimage
    except ImportError:
        return _deepest_by_erosion(current)
    inside = np.pad(current, 1)
    distance = ndimage.distance_transform_edt(inside, sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    k, j, i = np.unravel_index(int(np.argmax(distance)), current.shape)
    return int(k), int(j), int(i)


def _deepest_by_erosion(current: np.ndarray) -> tuple[int, int, int]:
    while True:
        eroded = current.copy()
        for axis in range(3):
            eroded &= np.roll(current, 1, axis) & np.roll(current, -1, axis)
        if not eroded.any():
            inside = np.argwhere(current)
            return tuple(int(v) for v in inside[len(inside) // 2])
        current = eroded


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks of the same shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def one_click_dice(logic, volume_node, reference: np.ndarray, model: str,  # noqa: ANN001
                   click_kji: tuple[int, int, int] | None = None) -> float:
    """Start a session, click (world RAS) inside ``reference`` (K, J, I) and return the Dice.

    The click goes to ``click_kji``, or to the deepest voxel of ``reference`` (in mm) when None. Afterwards the click
    is undone and the segment must be empty again (raises AssertionError if not).
    """
    spacing_kji = tuple(reversed(image_geometry(volume_node).spacing))
    k, j, i = click_kji if click_kji is not None else deepest_voxel(reference, spacing_kji)
    ras = image_geometry(volume_node).ijk_to_world_points([[i, j, k]])[0]
    editor = logic.startInteractive(volume_node, model)
    logic.addPoint(ras, positive=True)
    result = slicer.util.arrayFromSegmentBinaryLabelmap(editor.segmentation_node, editor.segment_id, volume_node)
    score = dice(result > 0, reference > 0)
    logic.undo()
    after_undo = slicer.util.arrayFromSegmentBinaryLabelmap(editor.segmentation_node, editor.segment_id, volume_node)
    if after_undo.any():
        raise AssertionError("undo did not empty the segment")
    return score
