"""Correcting a segment that already exists (an automatic result, a loaded label map) with clicks, and
the other segments an interactive write leaves alone, against the real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import mini_slicer
from support.mini_slicer import add_parent_transform, make_oblique, rotation

pytestmark = [pytest.mark.slicer, pytest.mark.slow]


def record_interactions(client) -> list[tuple[dict | None, bool]]:  # noqa: ANN001
    """(interaction, whether the segment's voxels were sent with it) for each request the client makes."""
    sent: list[tuple[dict | None, bool]] = []
    interact = client.interact

    def recording(session_id: str, interaction, mask=None, object_id: int = 1):  # noqa: ANN001, ANN202
        sent.append((interaction, mask is not None))
        return interact(session_id, interaction, mask=mask, object_id=object_id)

    client.interact = recording
    return sent


def voxels(segmentation_node, segment_id: str, volume) -> np.ndarray:  # noqa: ANN001
    import slicer

    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume) > 0


def world_of(volume, kji) -> tuple[float, float, float]:  # noqa: ANN001
    from TSFMSegmentationLib.volumes import image_geometry

    return tuple(image_geometry(volume).ijk_to_world_points([[kji[2], kji[1], kji[0]]])[0])


@pytest.fixture
def sarcoma(mini, shared_data: Path):  # noqa: ANN001, ANN201
    """A held-out soft-tissue sarcoma CT (oblique, under a transform) and its reference tumour mask."""
    import slicer
    from TSFMSegmentationLib.selftest import deepest_voxel
    from TSFMSegmentationLib.volumes import image_geometry

    case = shared_data / "sts" / "STS_005"
    volume = mini_slicer.load_volume(case / "ct.nii.gz", "sts")
    reference = slicer.util.arrayFromVolume(mini_slicer.load_volume(case / "mask.nii.gz", "mask")) > 0
    make_oblique(volume, 25.0)
    add_parent_transform(volume, rotation("z", -35.0))
    spacing_kji = tuple(reversed(image_geometry(volume).spacing))
    return volume, reference, lambda mask: deepest_voxel(mask, spacing_kji)


def test_positive_click_outside_an_existing_segment_grows_it(logic, sarcoma) -> None:  # noqa: ANN001
    """Half of the tumour is segmented (as a loaded label map); a click in the other half adds to it."""
    from TSFMSegmentationLib.logic_interactive import InteractiveEditor
    from TSFMSegmentationLib.segments import labels_to_segmentation

    volume, reference, deepest = sarcoma
    half = reference.copy()
    half[:, :, int(np.median(np.nonzero(reference)[2])):] = False
    node, ids = labels_to_segmentation(half.astype(np.uint8), {1: "tumour"}, volume)
    editor = InteractiveEditor(logic.connection.client, volume, "sts-click-small", node,
                               settings=logic.editSettings)
    sent = record_interactions(editor.client)
    editor.start(ids[1])
    click = deepest(reference & ~half)
    editor.click(world_of(volume, click), positive=True)

    assert [seeded for _, seeded in sent] == [True, False]  # the segment's voxels first, then the click
    assert sent[1][0]["point"] == list(click)
    result = voxels(node, ids[1], volume)
    assert result[click]
    assert (result & half).sum() > 0.97 * half.sum()  # refined, not replaced
    assert (result & reference).sum() > (half & reference).sum() + 0.15 * reference.sum()
    assert len(node.GetSegmentation().GetSegmentIDs()) == 1  # no new segment


def test_negative_click_inside_an_existing_segment_removes_part_and_keeps_the_rest(logic, sarcoma) -> None:  # noqa: ANN001
    """The whole tumour is a segment of the editor's segmentation (as an automatic result would be);
    the user selects it and clicks near one end to take that end away."""
    import slicer
    from TSFMSegmentationLib.segments import labels_to_segmentation

    volume, reference, deepest = sarcoma
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "automatic")
    node.CreateDefaultDisplayNodes()
    editor = logic.startInteractive(volume, "sts-click-small", node)
    sent = record_interactions(editor.client)
    _, ids = labels_to_segmentation(reference.astype(np.uint8), {1: "tumour"}, volume, node)
    editor.edit_segment(ids[1], node)
    k, j, _ = deepest(reference)
    click = (k, j, int(np.nonzero(reference[k, j])[0].max()) - 3)
    editor.click(world_of(volume, click), positive=False)

    assert [seeded for _, seeded in sent] == [True, False]
    result = voxels(node, ids[1], volume)
    removed = reference & ~result
    assert not result[click]
    assert removed.sum() > 0.01 * reference.sum()
    assert result.sum() > 0.8 * reference.sum() and (result & ~reference).sum() < 0.01 * reference.sum()
    # Back to the whole tumour with undo; the next click starts from it again.
    assert editor.undo()
    np.testing.assert_array_equal(voxels(node, ids[1], volume), reference)


def test_edit_segment_switches_segments_and_refuses_another_segmentation(logic, small_ct_path: Path) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib.logic_interactive import OtherSegmentation
    from TSFMSegmentationLib.segments import add_empty_segment, apply_crop

    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    editor = logic.startInteractive(volume, "tiny-click")
    first, first_object = editor.segment_id, editor.object_id
    drawn = add_empty_segment(editor.segmentation_node, "drawn by hand")
    apply_crop(editor.segmentation_node, drawn, volume, (12, 45, 55), np.ones((4, 6, 6), np.uint8))
    sent = record_interactions(editor.client)
    editor.edit_segment(drawn)
    editor.click(world_of(volume, (14, 48, 58)))
    assert editor.segment_id == drawn and [seeded for _, seeded in sent] == [True, False]
    assert sent[1][0]["object_id"] == editor.object_id != first_object
    editor.edit_segment(first)
    editor.click(world_of(volume, (14, 48, 58)))
    assert [seeded for _, seeded in sent[2:]] == [False]  # the empty first segment needs no seed
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    with pytest.raises(OtherSegmentation, match="start the session again on that segmentation"):
        editor.edit_segment(other.GetSegmentation().AddEmptySegment("x"), other)
    with pytest.raises(KeyError):
        editor.edit_segment("no such segment")


@pytest.mark.parametrize("overwrite", [None, "OverwriteAllSegments"])
def test_interactive_write_leaves_other_segments_alone_unless_told(logic, small_ct_path: Path,  # noqa: ANN001
                                                                   overwrite: str | None) -> None:
    """By default a click never takes voxels from another segment; a Segment Editor node's explicit
    overwrite setting is honoured."""
    import slicer
    from TSFMSegmentationLib.segments import add_empty_segment, apply_crop

    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    if overwrite is not None:
        logic.segmentEditorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        logic.segmentEditorNode.SetOverwriteMode(getattr(slicer.vtkMRMLSegmentEditorNode, overwrite))
    editor = logic.startInteractive(volume, "tiny-click")
    body = add_empty_segment(editor.segmentation_node, "body")
    everywhere = np.ones((30, 101, 122), np.uint8)
    apply_crop(editor.segmentation_node, body, volume, (0, 0, 0), everywhere)
    first = editor.segment_id
    editor.edit_segment(first)
    editor.click(world_of(volume, (10, 30, 30)))
    clicked = voxels(editor.segmentation_node, first, volume)
    assert clicked.any()  # the answer overlaps "body", which covers every voxel
    body_now = voxels(editor.segmentation_node, body, volume)
    if overwrite is None:
        assert body_now.all()
    else:
        np.testing.assert_array_equal(body_now, ~clicked)
