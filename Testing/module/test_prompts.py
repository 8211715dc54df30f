"""Markups placed in the scene -> interactions in voxel indices: points, ROI boxes, transforms on both sides."""

from __future__ import annotations

import numpy as np
import pytest
from support.mini_slicer import add_parent_transform, make_oblique, rotation

pytestmark = pytest.mark.slicer


def voxel_world(volume_node, kji) -> np.ndarray:  # noqa: ANN001
    from TSFMSegmentationLib.volumes import image_geometry

    return image_geometry(volume_node).ijk_to_world_points([[kji[2], kji[1], kji[0]]])[0]


def test_clicks_in_point_lists_map_to_voxels(ct_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib import prompts
    from TSFMSegmentationLib.volumes import PromptOutsideVolume, image_geometry

    make_oblique(ct_node, 35.0)
    add_parent_transform(ct_node, np.diag([1.0, -1.0, 1.0, 1.0]) @ rotation("x", 12.0))  # flipped A-P
    positive = prompts.create_prompt_list(prompts.POSITIVE_ROLE)
    negative = prompts.create_prompt_list(prompts.NEGATIVE_ROLE)
    # The point lists sit under a transform of their own: their world positions are what counts.
    shift = np.eye(4)
    shift[:3, 3] = (4.0, -2.0, 1.0)
    add_parent_transform(negative, shift)
    positive.AddControlPoint(*voxel_world(ct_node, (14, 50, 61)))
    negative.AddControlPoint(*(voxel_world(ct_node, (3, 9, 100)) - shift[:3, 3]))
    geometry = image_geometry(ct_node)

    first = prompts.point_interaction(geometry, prompts.control_point_world(positive, 0),
                                      prompts.is_positive(positive), object_id=2)
    second = prompts.point_interaction(geometry, prompts.control_point_world(negative, 0),
                                       prompts.is_positive(negative))
    assert first == {"kind": "point", "point": [14, 50, 61], "positive": True, "object_id": 2}
    assert second == {"kind": "point", "point": [3, 9, 100], "positive": False, "object_id": 1}
    with pytest.raises(PromptOutsideVolume, match="outside the volume"):
        prompts.point_interaction(geometry, tuple(voxel_world(ct_node, (-3, 50, 61))), True)
    with pytest.raises(ValueError, match="prompt role"):
        prompts.create_prompt_list("maybe")


def test_rotated_roi_box_covers_its_voxels(ct_node) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib import prompts
    from TSFMSegmentationLib.volumes import image_geometry, numpy_to_vtk_matrix

    make_oblique(ct_node, 20.0)
    add_parent_transform(ct_node, rotation("z", 40.0))
    geometry = image_geometry(ct_node)
    # An ROI aligned with the (oblique, transformed) voxel axes spanning voxels i 20-40, j 30-50, k 5-15.
    low, high = np.array([20, 30, 5]), np.array([40, 50, 15])
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    axes = geometry.ijk_to_world[:3, :3] / np.array(geometry.spacing)
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = axes
    object_to_world[:3, 3] = geometry.ijk_to_world_points([(low + high) / 2.0])[0]
    roi.SetSize(*((high - low) * np.array(geometry.spacing)))
    roi.SetAndObserveObjectToNodeMatrix(numpy_to_vtk_matrix(object_to_world))

    interaction = prompts.box_interaction(geometry, roi, object_id=3)
    assert interaction == {"kind": "box", "box": [[5, 30, 20], [15, 50, 40]], "positive": True, "object_id": 3}
    with pytest.raises(ValueError, match="place the box"):
        prompts.box_interaction(geometry, slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode"))
