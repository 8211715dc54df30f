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


# A CT-like phantom with a hypodense lesion in an organ: generated, so the self-test needs no data
# beside the module and knows the exact reference. Values in HU, spacing in mm (K, J, I).
PHANTOM_SHAPE_KJI = (64, 160, 160)
PHANTOM_SPACING_KJI = (2.5, 1.5, 1.5)


def phantom_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int16 image (K, J, I) in HU, bool lesion mask): air, a body, an organ, a lesion 5 HU in the
    60 HU organ (about 4300 voxels), a bone, Gaussian noise of 12 HU."""
    k, j, i = np.meshgrid(*(np.arange(n) * s for n, s in zip(PHANTOM_SHAPE_KJI, PHANTOM_SPACING_KJI, strict=True)),
                          indexing="ij")
    image = np.full(PHANTOM_SHAPE_KJI, -1000.0, np.float32)
    image[((j - 120) / 100) ** 2 + ((i - 120) / 110) ** 2 <= 1] = 30.0
    image[((k - 80) / 45) ** 2 + ((j - 110) / 50) ** 2 + ((i - 150) / 55) ** 2 <= 1] = 60.0
    lesion = ((k - 85) / 18) ** 2 + ((j - 105) / 16) ** 2 + ((i - 160) / 20) ** 2 <= 1
    image[lesion] = 5.0
    image[((j - 200) / 14) ** 2 + ((i - 120) / 14) ** 2 <= 1] = 500.0
    image += np.random.default_rng(seed).normal(0.0, 12.0, image.shape).astype(np.float32)
    return np.round(image).astype(np.int16), lesion


def add_phantom(name: str = "TSFM self-test phantom") -> tuple[slicer.vtkMRMLScalarVolumeNode, np.ndarray]:
    """The phantom as a volume node in the scene (RAS axes, the phantom's spacing) and its lesion mask."""
    image, lesion = phantom_arrays()
    ijk_to_ras = np.diag([*reversed(PHANTOM_SPACING_KJI), 1.0])
    return slicer.util.addVolumeFromArray(image, ijk_to_ras, name), lesion


def lesion_box_world(volume_node, reference: np.ndarray, on_one_slice: bool) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(center, size) in world RAS mm of the box around ``reference``: a 3D box, or a rectangle (size 0
    along K) on the slice where the reference is largest, as a user draws one."""
    inside = np.argwhere(reference)
    low, high = inside.min(0).astype(float), inside.max(0).astype(float)
    if on_one_slice:
        low[0] = high[0] = float(np.argmax(reference.sum(axis=(1, 2))))
    geometry = image_geometry(volume_node)
    corners = geometry.ijk_to_world_points([[low[2], low[1], low[0]], [high[2], high[1], high[0]]])
    return (corners[0] + corners[1]) / 2.0, np.abs(corners[1] - corners[0])


# What the self-test requires of the default model on the phantom (it measures about 0.32 and 0.66):
# far above what a wrong geometry or a broken model gives (near 0), below what the model reaches. The
# click measures 0.53 with first masks at logit 0; the card's first_mask_logit -1, which raises one click
# on real tumours and organs, over-segments the phantom's sharp, uniform lesion.
MIN_CLICK_DICE = 0.25
MIN_BOX_DICE = 0.5


def place_box(roi_node, centre_ras: np.ndarray, size_mm: np.ndarray) -> None:  # noqa: ANN001
    """Put a placed ROI (one defined centre point, as after Slicer's two-click placement) at ``centre_ras``."""
    roi_node.SetCenterWorld(*(float(v) for v in centre_ras))
    roi_node.SetSize(*(float(v) for v in size_mm))


def current_segment_mask(editor) -> np.ndarray:  # noqa: ANN001
    """bool (K, J, I): the segment the interactive editor is editing, on its volume's grid."""
    return slicer.util.arrayFromSegmentBinaryLabelmap(editor.segmentation_node, editor.segment_id,
                                                      editor.volume_node) > 0
