"""Augmentation of the interactive recipe's crops: rotation and zoom in millimetres, gamma and noise.

The spatial transform is drawn in physical space (rotations about the K axis, the axial plane's normal,
and smaller tilts about J and I; one isotropic zoom) and applied on the anisotropic model grid, so a
rotated tumour keeps its shape in millimetres. Image and mask are resampled with the same transform
(linear; the mask thresholded at 0.5) before the prompts are simulated on the transformed mask, so the
clicks always fall where the transformed reference says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from tsfm_training.config import settings

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ClickAugmentation:
    """Probabilities and ranges; all probabilities 0 (the default) leaves the crops as they are.

    ``rotation_deg`` is the largest rotation about (K, J, I) in degrees; ``zoom`` the (low, high) factor
    (> 1 enlarges the anatomy); ``gamma`` the (low, high) exponent applied to the crop's intensities
    rescaled to 0..1; ``noise_std`` the Gaussian noise in normalised intensity units.
    """

    spatial_probability: float = 0.0
    rotation_deg: tuple[float, float, float] = (20.0, 8.6, 8.6)
    zoom: tuple[float, float] = (0.85, 1.2)
    gamma_probability: float = 0.0
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_probability: float = 0.0
    noise_std: float = 0.05

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClickAugmentation:
        """Build from the config's ``augmentation`` mapping, naming any key that is not a field."""
        return settings(cls, {key: tuple(value) if isinstance(value, list) else value
                              for key, value in values.items()}, "augmentation")


def rotation_matrix(axis: int, radians: float) -> np.ndarray:
    """(3, 3) rotation about ``axis`` (0 = K, 1 = J, 2 = I)."""
    cosine, sine = math.cos(radians), math.sin(radians)
    matrix = np.eye(3)
    first, second = (a for a in range(3) if a != axis)
    matrix[first, first], matrix[first, second] = cosine, -sine
    matrix[second, first], matrix[second, second] = sine, cosine
    return matrix


def random_voxel_transform(rng: np.random.Generator, spacing: tuple[float, float, float],
                           augmentation: ClickAugmentation) -> np.ndarray | None:
    """(3, 3) map from output to input voxel offsets (about the crop centre), or None for no transform."""
    if not _happens(rng, augmentation.spatial_probability):
        return None
    rotation = np.eye(3)
    for axis, degrees in enumerate(augmentation.rotation_deg):
        rotation = rotation @ rotation_matrix(axis, math.radians(rng.uniform(-degrees, degrees)))
    zoom = rng.uniform(*augmentation.zoom)
    millimetres = np.diag(np.asarray(spacing, dtype=float))
    return np.linalg.inv(millimetres) @ rotation @ millimetres / zoom


def transformed_crop(array: np.ndarray, centre: np.ndarray, size: Shape, transform: np.ndarray,
                     fill: float) -> np.ndarray:
    """The ``size`` crop around voxel ``centre`` of ``array`` after ``transform`` (linear interpolation).

    Output voxel ``size // 2`` samples ``centre``; the identity gives ``array[centre - size // 2:][:size]``.

    Boolean arrays come back boolean (interpolated, then thresholded at 0.5); voxels that map outside the
    array take ``fill``.
    """
    source = array.astype(np.float32) if array.dtype == bool else array
    output_centre = np.asarray(size, dtype=float) // 2  # so that no transform is the plain crop
    offset = np.asarray(centre, dtype=float) - transform @ output_centre
    result = ndimage.affine_transform(source, transform, offset, output_shape=size, order=1,
                                      mode="constant", cval=0.0 if array.dtype == bool else fill)
    return result > 0.5 if array.dtype == bool else result.astype(array.dtype)


def adjust_intensity(image: np.ndarray, rng: np.random.Generator, augmentation: ClickAugmentation) -> np.ndarray:
    """The crop after a random gamma (on its own 0..1 range, then scaled back) and Gaussian noise."""
    if _happens(rng, augmentation.gamma_probability):
        low, high = float(image.min()), float(image.max())
        spread = max(high - low, 1e-6)
        image = ((image - low) / spread) ** rng.uniform(*augmentation.gamma) * spread + low
    if _happens(rng, augmentation.noise_probability):
        image = image + rng.normal(0.0, augmentation.noise_std, image.shape)
    return image.astype(np.float32)


def _happens(rng: np.random.Generator, probability: float) -> bool:
    """A draw with ``probability``; none is taken at 0, so runs without augmentation draw what they always did."""
    return probability > 0 and rng.random() < probability
