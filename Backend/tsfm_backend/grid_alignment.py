"""Label maps on their image's voxel grid, by physical position rather than by array index.

A label map saved by another tool can hold the same voxels as its image in another array order: the
same lattice of voxel centres, with axes flipped or swapped (TotalSegmentator, for example, writes the
segmentation of a DICOM series as a NIfTI whose J axis runs the other way). Pairing the two arrays index
by index then labels the wrong anatomy without any error. ``labels_on_image_grid`` maps the label array
onto the image's (K, J, I) grid exactly (flips and transposes, no interpolation) when the two lattices
coincide, and refuses, naming both geometries, when they do not.
"""

from __future__ import annotations

import numpy as np

from tsfm_backend.volume import Volume

# Voxel centres closer than this fraction of a voxel are the same centre (header rounding).
INDEX_TOLERANCE = 0.01


class GridMismatchError(ValueError):
    """A label map whose voxel centres are not those of its image (other spacing, shift or rotation)."""


def _describe(volume: Volume) -> str:
    return (f"shape (K, J, I) {volume.shape}, spacing (I, J, K) {tuple(round(s, 4) for s in volume.spacing)} mm, "
            f"origin {tuple(round(o, 3) for o in volume.origin)} mm, "
            f"direction {tuple(round(d, 3) for d in volume.direction)}")


def labels_on_image_grid(labels: Volume, image: Volume, name: str = "label map") -> np.ndarray:
    """``labels.array`` arranged on ``image``'s grid: entry (k, j, i) is the label at image voxel (k, j, i).

    The array itself when the geometries agree; an exact flip / transpose of it when the label lattice is
    the image's in another axis order or direction; ``GridMismatchError`` otherwise.
    """
    # Image voxel index (i, j, k) -> label voxel index: an integer signed permutation plus an offset
    # when the lattices coincide.
    mapping = np.linalg.inv(labels.ijk_to_lps()) @ image.ijk_to_lps()
    rotation, offset = mapping[:3, :3], mapping[:3, 3]
    signs = np.round(rotation)
    integral = np.abs(rotation - signs).max() < INDEX_TOLERANCE and np.abs(offset - np.round(offset)).max() < INDEX_TOLERANCE
    permutation_matrix = np.abs(signs)
    is_permutation = (permutation_matrix.sum(0) == 1).all() and (permutation_matrix.sum(1) == 1).all()
    if not (integral and is_permutation):
        raise GridMismatchError(f"{name} is not on its image's voxel grid: image {_describe(image)}; "
                                f"{name} {_describe(labels)}")
    label_axis = np.argmax(permutation_matrix, axis=0)  # image axis a (i, j, k) reads label axis label_axis[a]
    label_shape_ijk = labels.shape[::-1]
    image_shape_ijk = image.shape[::-1]
    array_ijk = labels.array.transpose(2, 1, 0).transpose(*label_axis)
    for axis in range(3):
        sign = signs[label_axis[axis], axis]
        start = int(round(offset[label_axis[axis]]))
        size = label_shape_ijk[label_axis[axis]]
        # Image index x reads label index sign * x + start: the whole image axis must fall on the labels.
        covers = (start == 0) if sign > 0 else (start == size - 1)
        if not covers or size != image_shape_ijk[axis]:
            raise GridMismatchError(f"{name} covers another part of space than its image: image "
                                    f"{_describe(image)}; {name} {_describe(labels)}")
        if sign < 0:
            array_ijk = np.flip(array_ijk, axis=axis)
    return np.ascontiguousarray(array_ijk.transpose(2, 1, 0))
