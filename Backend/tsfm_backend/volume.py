"""A scalar image on a voxel grid with its physical geometry.

Conventions used everywhere in the backend:

* ``array`` is indexed (K, J, I) = (z, y, x), the order SimpleITK's ``GetArrayFromImage`` and
  Slicer's ``arrayFromVolume`` give.
* ``spacing``, ``origin`` and ``direction`` follow ITK: spacing is per (I, J, K) axis in mm, origin
  is the LPS position in mm of voxel (0, 0, 0), and the columns of ``direction`` are the LPS unit
  vectors of the I, J and K axes. A voxel index ``ijk`` sits at
  ``origin + direction @ (spacing * ijk)``.

Clients in RAS (Slicer) convert once, at their edge, by negating the first two rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class VolumeError(ValueError):
    """An image that cannot be used: wrong dimension, bad geometry, non-finite values."""


@dataclass(frozen=True)
class Volume:
    """Voxels in (K, J, I) order plus ITK geometry (spacing per I, J, K in mm; LPS origin and direction)."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=IDENTITY_DIRECTION)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise VolumeError(f"expected a 3D image, got {self.array.ndim} dimensions with shape {self.array.shape}")
        if min(self.array.shape) < 1:
            raise VolumeError(f"image has an empty axis: shape {self.array.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise VolumeError(f"spacing must be three positive finite numbers in mm, got {self.spacing}")
        if len(self.origin) != 3 or not all(np.isfinite(o) for o in self.origin):
            raise VolumeError(f"origin must be three finite numbers in mm, got {self.origin}")
        direction = np.asarray(self.direction, dtype=float)
        if direction.size != 9 or not np.all(np.isfinite(direction)):
            raise VolumeError(f"direction must be nine finite numbers (3x3 row-major), got {self.direction}")
        if abs(abs(np.linalg.det(direction.reshape(3, 3))) - 1.0) > 1e-3:
            raise VolumeError("direction matrix is not orthonormal (|det| != 1)")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in direction.ravel()))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape in (K, J, I) order."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        """Spacing in mm in the array's (K, J, I) order."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 matrix whose columns are the LPS directions of the I, J, K axes."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping a voxel index (i, j, k, 1) to LPS mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        matrix[:3, 3] = self.origin
        return matrix

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry carrying other voxels (for example a label map); shapes must match."""
        if array.shape != self.array.shape:
            raise VolumeError(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)
