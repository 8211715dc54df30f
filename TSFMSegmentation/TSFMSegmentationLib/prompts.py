"""Markups (point lists, ROI boxes) placed in any view -> interactions in voxel indices of the image.

Control points and ROI corners are read in world RAS coordinates (their own parent transforms
included) and mapped into the volume's voxel grid with its full world geometry (``volumes``), so a
click in the axial, sagittal, coronal or a reformatted view of an oblique, flipped or transformed
volume lands on the voxel under the cursor. An interaction is the dict that
``BackendClient.interact`` sends: ``{"kind": "point", "point": [k, j, i], "positive": bool,
"object_id": n}`` or ``{"kind": "box", "box": [[k0, j0, i0], [k1, j1, i1]], ...}`` (corners inclusive).

A box is the set of voxels whose centres lie inside the ROI. An ROI that is flat along one of its axes
(size 0, a rectangle drawn on one slice) or thinner than one voxel becomes a 2D box: one voxel layer,
the one through the ROI's centre, across the voxel axis closest to the ROI's normal, also when the volume
is oblique. An ROI still being placed (Slicer gives it size 0 after the first of its two clicks) is
``BoxNotReady``, which watchers skip silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer

from .volumes import (
    VOXEL_CENTRE_TOLERANCE,
    ImageGeometry,
    PromptOutsideVolume,
    node_to_world,
    vtk_matrix_to_numpy,
    world_to_kji,
)

POSITIVE_ROLE = "positive"
NEGATIVE_ROLE = "negative"
ROLE_ATTRIBUTE = "TSFMSegmentation.PromptRole"
POSITIVE_COLOR = (0.2, 0.9, 0.3)
NEGATIVE_COLOR = (0.95, 0.25, 0.25)
# An ROI side at most this long (mm, in the ROI's own frame) counts as zero: the ROI is flat along it.
FLAT_SIZE_MM = 1e-4
# Two clicks this close (mm) along an ROI axis lie on the same slice: the box was drawn on that slice.
SAME_SLICE_MM = 1e-3


class BoxNotReady(ValueError):
    """The ROI is not a box yet: not placed, still being placed, or of zero size along two or three axes."""


class BoxTooSmall(ValueError):
    """The ROI covers a single voxel along two or three axes of the image: no box the model can use."""


def point_interaction(geometry: ImageGeometry, ras: tuple[float, float, float], positive: bool,
                      object_id: int = 1) -> dict[str, Any]:
    """One click at world RAS mm -> a point interaction on the nearest voxel (refused outside the image)."""
    k, j, i = world_to_kji(geometry, ras)
    return {"kind": "point", "point": [k, j, i], "positive": bool(positive), "object_id": int(object_id)}


def roi_corners_world(roi_node: slicer.vtkMRMLMarkupsROINode) -> np.ndarray:
    """(8, 3) world RAS corners of a (possibly rotated, possibly transformed) ROI box."""
    radius = [0.0, 0.0, 0.0]
    roi_node.GetRadiusXYZ(radius)
    object_to_node = vtk_matrix_to_numpy(roi_node.GetObjectToNodeMatrix())
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    corners = np.c_[signs * np.array(radius), np.ones(8)]
    return (node_to_world(roi_node) @ object_to_node @ corners.T).T[:, :3]


def box_interaction(geometry: ImageGeometry, roi_node: slicer.vtkMRMLMarkupsROINode,
                    object_id: int = 1) -> dict[str, Any]:
    """An ROI node -> the inclusive voxel box that covers it, clipped to the image.

    A 3D ROI gives the voxels whose centres it holds; a flat or sub-voxel-thin ROI gives one voxel layer
    (a 2D box). Raises ``BoxNotReady`` while the ROI is not a box yet, ``BoxTooSmall`` when it covers a
    single voxel along two axes, ``PromptOutsideVolume`` when it misses the image.
    """
    flat_axis = placed_box_flat_axis(roi_node)
    low, high = roi_voxel_box(geometry, roi_corners_world(roi_node), flat_axis)
    return {"kind": "box", "box": [list(low), list(high)], "positive": True, "object_id": int(object_id)}


def placed_box_flat_axis(roi_node: slicer.vtkMRMLMarkupsROINode | None) -> int | None:
    """The ROI axis (0, 1, 2) along which a placed ROI is flat, None for a 3D ROI.

    Raises ``BoxNotReady`` when the ROI has no control point, when Slicer is still placing it (after
    the first click of two it has one defined point of the two it requires, and size 0), or when its
    size is zero along two or three axes.
    """
    if roi_node is None or roi_node.GetNumberOfControlPoints() == 0:
        raise BoxNotReady("place the box (ROI) in a view first")
    if roi_node.GetNumberOfDefinedControlPoints() < roi_node.GetRequiredNumberOfControlPoints():
        raise BoxNotReady("the box (ROI) is still being placed: click its opposite corner")
    size = roi_node.GetSize()
    flat = [axis for axis in range(3) if abs(size[axis]) <= FLAT_SIZE_MM]
    if len(flat) > 1:
        raise BoxNotReady(f"the box (ROI) has no size along {' and '.join('xyz'[a] for a in flat)}: drag it out")
    return flat[0] if flat else None


def flatten_if_drawn_on_one_slice(roi_node: slicer.vtkMRMLMarkupsROINode, first_corner: np.ndarray) -> int | None:
    """Make a just-placed ROI flat when its two clicks lay on one slice; returns the flat ROI axis or None.

    Slicer places an ROI from two clicks (opposite corners) and, in a slice view, gives it a depth along
    the view's normal as long as its shorter side, so a rectangle drawn on one slice would be sent, and
    shown, as a 3D box. ``first_corner`` is the first click (node coordinates); the second is its mirror
    through the ROI's centre. When the two differ along exactly one ROI axis by less than
    ``SAME_SLICE_MM``, the ROI is flattened along that axis: the 2D box the user drew.
    """
    centre = np.array(roi_node.GetCenter(), float)
    object_to_node = vtk_matrix_to_numpy(roi_node.GetObjectToNodeMatrix())[:3, :3]
    span = object_to_node.T @ (2.0 * (centre - np.asarray(first_corner, float)))
    same = [axis for axis in range(3) if abs(span[axis]) < SAME_SLICE_MM]
    if len(same) != 1:
        return None
    size = list(roi_node.GetSize())
    size[same[0]] = 0.0
    roi_node.SetSize(*size)
    return same[0]


def roi_voxel_box(geometry: ImageGeometry, corners_ras: np.ndarray, flat_axis: int | None = None
                  ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Inclusive voxel box ((k0, j0, i0), (k1, j1, i1)) of an ROI given by its (8, 3) world corners.

    ``corners_ras`` are ordered as ``roi_corners_world`` gives them; ``flat_axis`` is the ROI axis along
    which it is flat (``placed_box_flat_axis``). Along each voxel axis the box holds the voxels whose
    centres lie inside the ROI; along the voxel axis that crosses a flat ROI, and along any axis where
    the ROI is too thin to hold a voxel centre, it holds the one layer nearest the ROI's centre.
    """
    ijk = geometry.world_to_ijk(np.asarray(corners_ras, float))
    low = np.ceil(ijk.min(axis=0) - VOXEL_CENTRE_TOLERANCE).astype(int)
    high = np.floor(ijk.max(axis=0) + VOXEL_CENTRE_TOLERANCE).astype(int)
    one_layer = set(np.flatnonzero(high < low).tolist())
    if flat_axis is not None:
        one_layer.add(_voxel_axis_across(geometry, ijk, flat_axis))
    centre = np.floor(ijk.mean(axis=0) + 0.5).astype(int)
    for axis in one_layer:
        low[axis] = high[axis] = centre[axis]
    last = np.array(geometry.shape_kji[::-1]) - 1
    if np.any(high < 0) or np.any(low > last):
        raise PromptOutsideVolume("the box does not cover the centre of any voxel of the volume")
    low, high = np.maximum(low, 0), np.minimum(high, last)
    single = [name for axis, name in zip((2, 1, 0), "kji", strict=True) if low[axis] == high[axis]]
    if len(single) > 1:
        raise BoxTooSmall(f"the box covers a single voxel along {' and '.join(single)}: draw it at least two "
                          "voxels wide on the slice")
    return (int(low[2]), int(low[1]), int(low[0])), (int(high[2]), int(high[1]), int(high[0]))


def _voxel_axis_across(geometry: ImageGeometry, corners_ijk: np.ndarray, flat_axis: int) -> int:
    """The voxel axis (0 = i, 1 = j, 2 = k) closest in space to the normal of a flat ROI."""
    # roi_corners_world orders corners by sign bits (x: 4, y: 2, z: 1), so corner 0 and the corner with
    # one bit set span one ROI edge each.
    edges = [corners_ijk[4] - corners_ijk[0], corners_ijk[2] - corners_ijk[0], corners_ijk[1] - corners_ijk[0]]
    in_plane = [edges[axis] for axis in range(3) if axis != flat_axis]
    # In millimetres along the (orthogonal) voxel axes, so that the angle is the one the user sees.
    scale = np.array(geometry.spacing)
    normal = np.cross(in_plane[0] * scale, in_plane[1] * scale)
    return int(np.argmax(np.abs(normal)))


def control_point_world(markups_node: slicer.vtkMRMLMarkupsNode, index: int) -> tuple[float, float, float]:
    """World RAS position of one control point (parent transforms applied)."""
    position = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(index, position)
    return (float(position[0]), float(position[1]), float(position[2]))


def is_positive(markups_node: slicer.vtkMRMLMarkupsNode) -> bool:
    return markups_node.GetAttribute(ROLE_ATTRIBUTE) != NEGATIVE_ROLE


def create_prompt_list(role: str, name: str | None = None) -> slicer.vtkMRMLMarkupsFiducialNode:
    """A point list for positive or negative clicks, coloured so the two are told apart in every view."""
    if role not in (POSITIVE_ROLE, NEGATIVE_ROLE):
        raise ValueError(f"prompt role must be '{POSITIVE_ROLE}' or '{NEGATIVE_ROLE}', not {role!r}")
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name or f"{role} clicks")
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        color = POSITIVE_COLOR if role == POSITIVE_ROLE else NEGATIVE_COLOR
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetPointLabelsVisibility(False)
    return node

