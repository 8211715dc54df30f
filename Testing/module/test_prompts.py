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


def voxel_aligned_roi(geometry, low, high, name: str = "box"):  # noqa: ANN001, ANN201
    """An ROI along the volume's (oblique, transformed) voxel axes from voxel (i, j, k) ``low`` to ``high``."""
    import slicer
    from TSFMSegmentationLib.volumes import numpy_to_vtk_matrix

    low, high = np.asarray(low, float), np.asarray(high, float)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = geometry.ijk_to_world[:3, :3] / np.array(geometry.spacing)
    object_to_world[:3, 3] = geometry.ijk_to_world_points([(low + high) / 2.0])[0]
    roi.SetSize(*((high - low) * np.array(geometry.spacing)))
    roi.SetAndObserveObjectToNodeMatrix(numpy_to_vtk_matrix(object_to_world))
    return roi


@pytest.mark.parametrize(("k_low", "k_high", "layer"), [
    (10.0, 10.0, 10),   # flat, drawn on the slice through voxel centres k = 10
    (10.4, 10.4, 10),   # flat, between two slices: the nearer one
    (10.6, 10.6, 11),
    (10.1, 10.4, 10),   # a 3D ROI thinner than one voxel that holds no voxel centre
])
def test_flat_or_thin_roi_on_a_slice_is_one_voxel_layer(ct_node, k_low: float, k_high: float, layer: int) -> None:  # noqa: ANN001
    from TSFMSegmentationLib import prompts
    from TSFMSegmentationLib.volumes import image_geometry

    make_oblique(ct_node, 20.0)
    add_parent_transform(ct_node, rotation("z", 40.0))
    geometry = image_geometry(ct_node)
    roi = voxel_aligned_roi(geometry, (20, 30, k_low), (40, 50, k_high))
    assert (prompts.placed_box_flat_axis(roi) == 2) == (k_low == k_high)
    assert prompts.box_interaction(geometry, roi)["box"] == [[layer, 30, 20], [layer, 50, 40]]


def test_flat_roi_across_an_oblique_volume_is_the_layer_through_its_centre(ct_node) -> None:  # noqa: ANN001
    """An ROI drawn in an axial (RAS) view over an oblique volume is tilted against its slices: it becomes
    the one slice of the volume through the ROI's centre, spanning what the ROI spans in that slice."""
    import slicer
    from TSFMSegmentationLib import prompts
    from TSFMSegmentationLib.volumes import image_geometry

    make_oblique(ct_node, 20.0)
    geometry = image_geometry(ct_node)
    centre = geometry.ijk_to_world_points([(60.0, 50.0, 15.0)])[0]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "axial box")
    roi.SetCenterWorld(*centre)
    roi.SetSize(40.0, 30.0, 0.0)  # flat along S, in RAS
    interaction = prompts.box_interaction(geometry, roi)
    (k0, j0, i0), (k1, j1, i1) = interaction["box"]
    assert k0 == k1 == 15
    corners = geometry.world_to_ijk(prompts.roi_corners_world(roi))
    assert (i0, i1) == (int(np.ceil(corners[:, 0].min())), int(np.floor(corners[:, 0].max())))
    assert (j0, j1) == (int(np.ceil(corners[:, 1].min())), int(np.floor(corners[:, 1].max())))
    assert corners[:, 2].max() - corners[:, 2].min() > 2  # tilted: the plain cover would span several slices


def test_roi_not_yet_a_box_is_refused_as_not_ready(ct_node) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib import prompts
    from TSFMSegmentationLib.volumes import image_geometry

    geometry = image_geometry(ct_node)
    centre = geometry.ijk_to_world_points([(60.0, 50.0, 15.0)])[0]
    placing = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "first click only")
    placing.AddControlPointWorld(*centre)  # one defined point of the two a box needs: size 0
    assert placing.GetRequiredNumberOfControlPoints() == 2 and placing.GetSize() == (0.0, 0.0, 0.0)
    line = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "line")
    line.SetCenterWorld(*centre)
    line.SetSize(30.0, 0.0, 0.0)
    for roi, message in [(placing, "still being placed"), (line, "no size along y and z")]:
        with pytest.raises(prompts.BoxNotReady, match=message):
            prompts.box_interaction(geometry, roi)
    rod = voxel_aligned_roi(geometry, (20, 30, 10), (40, 30.2, 10))  # one voxel wide along j and k
    with pytest.raises(prompts.BoxTooSmall, match="single voxel along k and j"):
        prompts.box_interaction(geometry, rod)
    outside = voxel_aligned_roi(geometry, (20, 30, 40), (40, 50, 40))
    with pytest.raises(prompts.PromptOutsideVolume, match="does not cover"):
        prompts.box_interaction(geometry, outside)
