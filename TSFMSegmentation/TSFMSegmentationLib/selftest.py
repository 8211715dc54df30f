"""The measurement behind the module's self-test: one click at the heart of a reference mask -> Dice.

Kept Qt-free so that pytest runs the very same steps on a headless scene that Slicer's self-test runs
in the application.
"""

from __future__ import annotations

import numpy as np
import slicer

from .volumes import image_geometry


def deepest_voxel(mask: np.ndarray) -> tuple[int, int, int]:
    """(k, j, i) of a voxel as far inside ``mask`` (K, J, I) as repeated 6-neighbour erosion reaches."""
    current = np.asarray(mask, bool)
    if not current.any():
        raise ValueError("the reference mask is empty")
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


def one_click_dice(logic, volume_node, reference: np.ndarray, model: str) -> float:  # noqa: ANN001
    """Start a session, click (world RAS) at the deepest voxel of ``reference`` (K, J, I), return Dice.

    Afterwards the click is undone and the segment must be empty again (raises AssertionError if not).
    """
    k, j, i = deepest_voxel(reference)
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
