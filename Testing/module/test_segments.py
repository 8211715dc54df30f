"""Label maps and crops written into segmentation nodes on real MRML, under transforms and editor settings."""

from __future__ import annotations

import numpy as np
import pytest
from support.mini_slicer import add_parent_transform, make_oblique, rotation

pytestmark = pytest.mark.slicer


def labels_of(segmentation_node, segment_id: str, volume_node) -> np.ndarray:  # noqa: ANN001
    """Slicer's own export of one segment onto the volume grid (independent of our crop reader)."""
    import slicer

    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node)


def ct_labels(volume_node) -> np.ndarray:  # noqa: ANN001
    """Three real structures of the CT: air outside the body, fat, and dense tissue/bone."""
    import slicer

    ct = slicer.util.arrayFromVolume(volume_node)
    labels = np.zeros(ct.shape, np.uint8)
    labels[ct < -500] = 1
    labels[(ct > -150) & (ct < -50)] = 2
    labels[ct > 200] = 7
    return labels


@pytest.mark.parametrize("transformed", [False, True])
def test_label_map_becomes_named_segments_on_exact_volume_grid(ct_node, transformed: bool) -> None:  # noqa: ANN001

    from TSFMSegmentationLib.segments import labels_to_segmentation

    make_oblique(ct_node)
    if transformed:
        add_parent_transform(ct_node, rotation("z", 33.0))
    labels = ct_labels(ct_node)
    node, created = labels_to_segmentation(labels, {1: "air", 2: "fat", 7: "liver"}, ct_node)
    assert sorted(created) == [1, 2, 7]
    assert node.GetTransformNodeID() == ct_node.GetTransformNodeID()
    segmentation = node.GetSegmentation()
    assert [segmentation.GetSegment(created[n]).GetName() for n in (1, 2, 7)] == ["air", "fat", "Liver"]
    liver = segmentation.GetSegment(created[7])
    assert np.allclose(liver.GetColor(), np.array([221, 130, 101]) / 255)
    assert "SCT^10200004^Liver" in liver.GetTerminology()
    for label, segment_id in created.items():
        np.testing.assert_array_equal(labels_of(node, segment_id, ct_node), labels == label)


def test_crop_is_written_in_place_and_undone(ct_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.segments import (
        add_empty_segment,
        apply_crop,
        labels_to_segmentation,
        redo_change,
        undo_change,
    )

    make_oblique(ct_node)
    add_parent_transform(ct_node, rotation("x", -20.0))
    node, created = labels_to_segmentation(ct_labels(ct_node), {1: "air"}, ct_node)
    tumour = add_empty_segment(node, "tumour")
    first = np.zeros((6, 10, 12), np.uint8)
    first[1:5, 2:8, 3:9] = 1
    change = apply_crop(node, tumour, ct_node, (10, 40, 50), first)

    expected = np.zeros((30, 101, 122), bool)
    expected[11:15, 42:48, 53:59] = True
    np.testing.assert_array_equal(labels_of(node, tumour, ct_node), expected)

    second = np.zeros((4, 4, 4), np.uint8)
    second[:2] = 1
    second_change = apply_crop(node, tumour, ct_node, (12, 44, 55), second)
    grown = expected.copy()
    grown[12:16, 44:48, 55:59] = False
    grown[12:14, 44:48, 55:59] = True
    np.testing.assert_array_equal(labels_of(node, tumour, ct_node), grown)

    undo_change(node, ct_node, second_change)
    np.testing.assert_array_equal(labels_of(node, tumour, ct_node), expected)
    undo_change(node, ct_node, change)
    assert not labels_of(node, tumour, ct_node).any()
    redo_change(node, ct_node, change)
    np.testing.assert_array_equal(labels_of(node, tumour, ct_node), expected)


def test_crop_at_volume_border_is_clipped(ct_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.segments import add_empty_segment, apply_crop, labels_to_segmentation

    node, _ = labels_to_segmentation(np.zeros((30, 101, 122), np.uint8), {}, ct_node)
    segment = add_empty_segment(node, "lesion")
    apply_crop(node, segment, ct_node, (27, -2, 120), np.ones((5, 4, 5), np.uint8))
    expected = np.zeros((30, 101, 122), bool)
    expected[27:30, 0:2, 120:122] = True
    np.testing.assert_array_equal(labels_of(node, segment, ct_node), expected)
    with pytest.raises(ValueError, match="outside the volume"):
        apply_crop(node, segment, ct_node, (40, 0, 0), np.ones((2, 2, 2), np.uint8))


@pytest.mark.parametrize(
    ("mask_mode", "overwrite_mode", "inside_air", "air_keeps"),
    [
        ("EditAllowedEverywhere", "OverwriteAllSegments", True, False),
        ("EditAllowedEverywhere", "OverwriteNone", True, True),
        ("EditAllowedOutsideAllSegments", "OverwriteAllSegments", False, True),
        ("EditAllowedInsideAllSegments", "OverwriteNone", True, True),
    ],
)
def test_segment_editor_masking_and_overwrite_are_honoured(
    ct_node, mask_mode: str, overwrite_mode: str, inside_air: bool, air_keeps: bool  # noqa: ANN001
) -> None:
    import slicer
    from TSFMSegmentationLib.segments import (
        EditSettings,
        add_empty_segment,
        apply_crop,
        labels_to_segmentation,
    )

    labels = (ct_labels(ct_node) == 1).astype(np.uint8)
    node, created = labels_to_segmentation(labels, {1: "air"}, ct_node)
    air = created[1]
    tumour = add_empty_segment(node, "tumour")
    editor = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetMaskMode(getattr(slicer.vtkMRMLSegmentationNode, mask_mode))
    editor.SetOverwriteMode(getattr(slicer.vtkMRMLSegmentEditorNode, overwrite_mode))
    crop = np.ones((10, 101, 20), np.uint8)  # a slab that crosses air and body
    apply_crop(node, tumour, ct_node, (10, 0, 0), crop, EditSettings.from_editor_node(editor))

    tumour_now = labels_of(node, tumour, ct_node).astype(bool)
    air_now = labels_of(node, air, ct_node).astype(bool)
    slab = np.zeros(labels.shape, bool)
    slab[10:20, :, 0:20] = True
    air_in_slab = slab & (labels == 1)
    assert tumour_now[air_in_slab].all() == inside_air
    assert tumour_now[slab & (labels != 1)].all() == (mask_mode != "EditAllowedInsideAllSegments")
    assert not tumour_now[~slab].any()
    assert air_now[air_in_slab].all() == air_keeps
    np.testing.assert_array_equal(air_now[~slab], (labels == 1)[~slab])


def test_intensity_range_limits_the_edit(ct_node) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib.segments import (
        EditSettings,
        add_empty_segment,
        apply_crop,
        labels_to_segmentation,
    )

    node, _ = labels_to_segmentation(np.zeros((30, 101, 122), np.uint8), {}, ct_node)
    segment = add_empty_segment(node, "soft tissue")
    apply_crop(node, segment, ct_node, (0, 0, 0), np.ones((30, 101, 122), np.uint8),
               EditSettings(intensity_range=(-100.0, 100.0)))
    ct = slicer.util.arrayFromVolume(ct_node)
    np.testing.assert_array_equal(labels_of(node, segment, ct_node), (ct >= -100) & (ct <= 100))


def test_filled_segmentation_under_another_transform_is_not_moved(ct_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.segments import labels_to_segmentation

    node, _ = labels_to_segmentation(ct_labels(ct_node), {1: "air"}, ct_node)
    add_parent_transform(ct_node, rotation("z", 10.0))
    with pytest.raises(ValueError, match="under another transform"):
        labels_to_segmentation(ct_labels(ct_node), {1: "air"}, ct_node, node)
    assert node.GetTransformNodeID() is None
