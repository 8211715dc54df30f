"""Volume nodes to backend images and back: geometry, world (RAS) <-> voxel indices, label maps.

Conventions: arrays are numpy (K, J, I) as ``slicer.util.arrayFromVolume`` gives them. The backend
speaks LPS (spacing (I, J, K) mm, origin LPS, direction 3x3 row-major whose columns are the LPS
directions of I, J, K). Slicer speaks RAS. The conversion happens here, once, with the full
direction matrix and with the volume's parent transform folded in, so oblique, flipped and
transformed volumes all work. Non-linear parent transforms are refused: a voxel grid cannot follow
them, and the user must harden the transform first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORTHOGONALITY_TOLERANCE = 1e-4
VOXEL_CENTRE_TOLERANCE = 1e-3


class VolumeGeometryError(ValueError):
    """The volume cannot be described as a voxel grid in world coordinates (named volume, reason)."""


class PromptOutsideVolume(ValueError):
    """A point or box does not fall on the volume's voxels."""


@dataclass(frozen=True)
class ImageGeometry:
    """Where a volume's voxels lie in the world.

    ijk_to_world: 4x4 RAS matrix from (i, j, k, 1) to world RAS mm, parent transforms included.
    shape_kji: array shape (K, J, I).
    """

    ijk_to_world: np.ndarray
    shape_kji: tuple[int, int, int]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along I, J, K in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.ijk_to_world[:3, :3], axis=0))

    @property
    def origin_lps(self) -> tuple[float, float, float]:
        """World position of voxel (0, 0, 0) in LPS mm."""
        return tuple(float(v) for v in (RAS_TO_LPS @ self.ijk_to_world[:, 3])[:3])

    @property
    def direction_lps(self) -> tuple[float, ...]:
        """3x3 row-major; column n is the LPS unit direction of voxel axis I, J, K."""
        directions = (RAS_TO_LPS[:3, :3] @ self.ijk_to_world[:3, :3]) / np.array(self.spacing)
        return tuple(float(v) for v in directions.reshape(-1))

    def world_to_ijk(self, ras: np.ndarray) -> np.ndarray:
        """(N, 3) world RAS mm -> (N, 3) continuous (i, j, k) voxel coordinates."""
        points = np.atleast_2d(np.asarray(ras, dtype=float))
        homogeneous = np.c_[points, np.ones(len(points))]
        return (np.linalg.inv(self.ijk_to_world) @ homogeneous.T).T[:, :3]

    def ijk_to_world_points(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) (i, j, k) voxel coordinates -> (N, 3) world RAS mm."""
        points = np.atleast_2d(np.asarray(ijk, dtype=float))
        return (self.ijk_to_world @ np.c_[points, np.ones(len(points))].T).T[:, :3]

    def contains_kji(self, kji: tuple[int, int, int]) -> bool:
        return all(0 <= kji[axis] < self.shape_kji[axis] for axis in range(3))


def vtk_matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def numpy_to_vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix


def node_to_world(node: slicer.vtkMRMLTransformableNode) -> np.ndarray:
    """4x4 matrix of the node's parent transforms (identity when there are none)."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise VolumeGeometryError(
            f"'{node.GetName()}' is under the non-linear transform '{transform.GetName()}'; "
            "harden the transform (Data module) before segmenting"
        )
    matrix = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(matrix)
    return vtk_matrix_to_numpy(matrix)


def image_geometry(volume_node: slicer.vtkMRMLScalarVolumeNode) -> ImageGeometry:
    """The voxel grid of a scalar volume in world coordinates, parent transforms included."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise VolumeGeometryError("no input volume, or the volume holds no image data")
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    ijk_to_world = node_to_world(volume_node) @ vtk_matrix_to_numpy(ijk_to_ras)
    axes = ijk_to_world[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if np.any(lengths <= 0):
        raise VolumeGeometryError(f"'{volume_node.GetName()}' has a zero voxel size")
    unit = axes / lengths
    if np.abs(unit.T @ unit - np.eye(3)).max() > ORTHOGONALITY_TOLERANCE:
        raise VolumeGeometryError(
            f"'{volume_node.GetName()}' is sheared (its voxel axes are not orthogonal in the world, "
            "usually through a parent transform); resample it first"
        )
    dims = volume_node.GetImageData().GetDimensions()
    return ImageGeometry(ijk_to_world=ijk_to_world, shape_kji=(dims[2], dims[1], dims[0]))


@dataclass(frozen=True)
class ImagePayload:
    """What ``BackendClient.upload_image`` takes: array (K, J, I) plus LPS geometry."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def image_payload(volume_node: slicer.vtkMRMLScalarVolumeNode) -> ImagePayload:
    """A copy of the voxels and the world geometry of a volume, ready for upload."""
    geometry = image_geometry(volume_node)
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise VolumeGeometryError(f"'{volume_node.GetName()}' has several components; pick a scalar volume")
    array = np.ascontiguousarray(slicer.util.arrayFromVolume(volume_node)).copy()
    return ImagePayload(array, geometry.spacing, geometry.origin_lps, geometry.direction_lps)


def dicom_modality(volume_node: slicer.vtkMRMLScalarVolumeNode) -> str | None:
    """The DICOM Modality (0008,0060) of a volume loaded from Slicer's DICOM database (``CT``, ``MR``,
    ``PT``, ...), or None for a volume loaded from a file or when the database does not know it."""
    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return None
    filename = database.fileForInstance(uids[0])
    value = database.fileValue(filename, "0008,0060").strip() if filename else ""
    return value or None


def world_to_kji(geometry: ImageGeometry, ras: tuple[float, float, float]) -> tuple[int, int, int]:
    """The voxel (k, j, i) whose centre is nearest to a world RAS point; refused outside the volume."""
    i, j, k = np.floor(geometry.world_to_ijk(np.asarray(ras))[0] + 0.5).astype(int)
    kji = (int(k), int(j), int(i))
    if not geometry.contains_kji(kji):
        raise PromptOutsideVolume(
            f"point R={ras[0]:.1f} A={ras[1]:.1f} S={ras[2]:.1f} lies outside the volume "
            f"(voxel k,j,i = {kji}, shape {geometry.shape_kji})"
        )
    return kji


def world_box_to_kji(
    geometry: ImageGeometry, corners_ras: np.ndarray
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """An inclusive voxel box ((k0, j0, i0), (k1, j1, i1)) covering world corners, clipped to the volume."""
    ijk = geometry.world_to_ijk(corners_ras)
    # A voxel belongs to the box when its centre does; the tolerance keeps corners placed exactly
    # on voxel centres (the usual case after snapping) inside.
    low = np.ceil(ijk.min(axis=0) - VOXEL_CENTRE_TOLERANCE).astype(int)
    high = np.floor(ijk.max(axis=0) + VOXEL_CENTRE_TOLERANCE).astype(int)
    size_ijk = np.array(geometry.shape_kji[::-1])
    low, high = np.maximum(low, 0), np.minimum(high, size_ijk - 1)
    if np.any(high < low):
        raise PromptOutsideVolume("the box does not cover the centre of any voxel of the volume")
    return (int(low[2]), int(low[1]), int(low[0])), (int(high[2]), int(high[1]), int(high[0]))


def labelmap_node_on_volume_grid(
    volume_node: slicer.vtkMRMLScalarVolumeNode, labels: np.ndarray, name: str = "labels"
) -> slicer.vtkMRMLLabelMapVolumeNode:
    """A label map node with exactly the voxels, IJK-to-RAS and parent transform of ``volume_node``."""
    geometry = image_geometry(volume_node)
    if tuple(labels.shape) != geometry.shape_kji:
        raise VolumeGeometryError(
            f"label map shape {tuple(labels.shape)} does not match volume '{volume_node.GetName()}' "
            f"shape {geometry.shape_kji} (K, J, I)"
        )
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    node.SetIJKToRASMatrix(ijk_to_ras)
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(labels))
    return node
