"""Markups (point lists, ROI boxes) placed in any view -> interactions in voxel indices of the image.

Control points and ROI corners are read in world RAS coordinates (their own parent transforms
included) and mapped into the volume's voxel grid with its full world geometry (``volumes``), so a
click in the axial, sagittal, coronal or a reformatted view of an oblique, flipped or transformed
volume lands on the voxel under the cursor. An interaction is the dict that
``BackendClient.interact`` sends: ``{"kind": "point", "point": [k, j, i], "positive": bool,
"object_id": n}`` or ``{"kind": "box", "box": [[k0, j0, i0], [k1, j1, i1]], ...}`` (corners inclusive).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer

from .volumes import ImageGeometry, node_to_world, vtk_matrix_to_numpy, world_box_to_kji, world_to_kji

POSITIVE_ROLE = "positive"
NEGATIVE_ROLE = "negative"
ROLE_ATTRIBUTE = "TSFMSegmentation.PromptRole"
POSITIVE_COLOR = (0.2, 0.9, 0.3)
NEGATIVE_COLOR = (0.95, 0.25, 0.25)


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
    """An ROI node -> the inclusive voxel box that covers it, clipped to the image."""
    if roi_node is None or roi_node.GetNumberOfControlPoints() == 0:
        raise ValueError("place the box (ROI) in a view first")
    low, high = world_box_to_kji(geometry, roi_corners_world(roi_node))
    return {"kind": "box", "box": [list(low), list(high)], "positive": True, "object_id": int(object_id)}


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

