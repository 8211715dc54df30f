"""Local corrections: a correction click changes the mask only near where the user clicked.

A click network re-predicts the whole region of interest at every click, so a click meant to fix one
boundary can also move another part of the mask the user had already accepted, and Dice can fall after
a correction. ``keep_changes_near`` keeps of the new prediction only the connected changes (26-connected
voxels that flip, added or removed) that reach the ball around the click, and reverts the rest: the
FocalClick idea of a local refinement, applied to the output so it holds for any click model.

Arrays are (K, J, I) on one grid; the click is (k, j, i) on that grid; radii are in voxels per axis.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def click_ball(shape: tuple[int, int, int], point: tuple[int, int, int],
               radius_vox: tuple[float, float, float]) -> np.ndarray:
    """(K, J, I) bool ellipsoid of ``radius_vox`` around ``point`` (which may lie outside the grid)."""
    axes = [(np.arange(n) - p) / max(r, 0.5) for n, p, r in zip(shape, point, radius_vox, strict=True)]
    return (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2) <= 1.0


def keep_changes_near(old: np.ndarray, new: np.ndarray, point: tuple[int, int, int],
                      radius_vox: tuple[float, float, float]) -> np.ndarray:
    """``new`` with each connected change from ``old`` that misses the click's ball reverted (uint8).

    When no change reaches the ball the new prediction is kept as it is: the click then asked for
    something the local rule cannot express (a region the network moved as a whole).
    """
    old, new = old > 0, new > 0
    changed = old != new
    if not changed.any():
        return new.astype(np.uint8)
    labels, count = ndimage.label(changed, structure=_CONNECTIVITY)
    near = np.unique(labels[click_ball(changed.shape, point, radius_vox) & changed])
    near = near[near > 0]
    if len(near) == 0:
        return new.astype(np.uint8)
    keep = np.isin(labels, near)
    return np.where(keep, new, old).astype(np.uint8)
