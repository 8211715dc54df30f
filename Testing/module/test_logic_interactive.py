"""Interactive editing from the module's Logic against the real server: clicks from world RAS on an
oblique, transformed CT; each answer lands in place in the current segment; undo/redo; objects;
a lost session is reopened and re-seeded from the segment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import mini_slicer
from support.mini_slicer import add_parent_transform, make_oblique, rotation

pytestmark = [pytest.mark.slicer, pytest.mark.slow]


class RecordingClient:
    """The real client, keeping each interaction it sent and the crop the server answered."""

    def __init__(self, client) -> None:  # noqa: ANN001
        self._client = client
        self.sent: list[tuple[dict | None, bool]] = []
        self.answers: list[tuple[tuple[int, int, int], np.ndarray]] = []

    def interact(self, session_id: str, interaction, mask=None, object_id: int = 1):  # noqa: ANN001, ANN201
        answer = self._client.interact(session_id, interaction, mask=mask, object_id=object_id)
        self.sent.append((interaction, mask is not None))
        self.answers.append(answer)
        return answer

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._client, name)


def segment_voxels(editor, segment_id: str | None = None) -> np.ndarray:  # noqa: ANN001
    import slicer

    return slicer.util.arrayFromSegmentBinaryLabelmap(
        editor.segmentation_node, segment_id or editor.segment_id, editor.volume_node) > 0


def world_of(volume, kji) -> tuple[float, float, float]:  # noqa: ANN001
    from TSFMSegmentationLib.volumes import image_geometry

    return tuple(image_geometry(volume).ijk_to_world_points([[kji[2], kji[1], kji[0]]])[0])


@pytest.fixture
def editing(logic, small_ct_path: Path):  # noqa: ANN001, ANN201
    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    make_oblique(volume, 25.0)
    add_parent_transform(volume, rotation("z", -35.0))
    recorder = RecordingClient(logic.connection.client)
    logic.connection.client = recorder
    editor = logic.startInteractive(volume, "tiny-click")
    return logic, editor, recorder, volume


def test_each_click_writes_the_answer_crop_in_place_and_undoes(editing) -> None:  # noqa: ANN001
    logic, editor, recorder, volume = editing
    assert editor.segmentation_node.GetTransformNodeID() == volume.GetTransformNodeID()
    expected = np.zeros((30, 101, 122), bool)
    states = [expected.copy()]
    for kji, positive in [((15, 50, 60), True), ((12, 40, 70), True), ((15, 52, 62), False)]:
        logic.addPoint(world_of(volume, kji), positive=positive)
        interaction, _ = recorder.sent[-1]
        assert interaction["point"] == list(kji) and interaction["positive"] is positive
        (k, j, i), crop = recorder.answers[-1]
        expected[k:k + crop.shape[0], j:j + crop.shape[1], i:i + crop.shape[2]] = crop > 0
        np.testing.assert_array_equal(segment_voxels(editor), expected)
        states.append(expected.copy())

    assert logic.undo()
    np.testing.assert_array_equal(segment_voxels(editor), states[2])
    assert logic.undo()
    np.testing.assert_array_equal(segment_voxels(editor), states[1])
    assert logic.redo()
    np.testing.assert_array_equal(segment_voxels(editor), states[2])

    # After undo the server is re-seeded with the segment's voxels before the next click (when the
    # undone voxels differ from the server's last answer, which holds for any non-trivial click).
    logic.addPoint(world_of(volume, (16, 55, 58)), positive=True)
    reseeded = not np.array_equal(states[2], states[3])
    assert [seeded for _, seeded in recorder.sent[-2:]] == ([True, False] if reseeded else [False, False])


def test_next_segment_is_a_separate_object_and_reset_is_undoable(editing) -> None:  # noqa: ANN001
    from TSFMSegmentationLib import provenance

    logic, editor, recorder, volume = editing
    logic.addPoint(world_of(volume, (15, 50, 60)))
    first_segment, first = editor.segment_id, segment_voxels(editor)
    second_segment = logic.nextSegment("lesion")
    logic.addPoint(world_of(volume, (10, 30, 30)))
    assert recorder.sent[-1][0]["object_id"] == 2
    second = segment_voxels(editor)
    assert second.any()
    # Without a Segment Editor node a click leaves the other segments alone.
    np.testing.assert_array_equal(segment_voxels(editor, first_segment), first)
    record = provenance.describe(editor.segmentation_node, second_segment, volume)
    assert record["model"] == "tiny-click" and record["source"] == "interactive" and len(record["prompts"]) == 1

    before_reset = segment_voxels(editor)
    logic.resetSegment()
    assert not segment_voxels(editor).any()
    assert logic.undo()
    np.testing.assert_array_equal(segment_voxels(editor), before_reset)


def test_lost_session_is_reopened_and_reseeded(editing) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.segments import apply_crop

    logic, editor, recorder, volume = editing
    logic.addPoint(world_of(volume, (15, 50, 60)))
    apply_crop(editor.segmentation_node, editor.segment_id, volume, (10, 40, 50), np.ones((3, 3, 3), np.uint8))
    old_session = editor.session_id
    recorder._client.close_session(old_session)  # as if the server had restarted or expired it
    logic.addPoint(world_of(volume, (14, 48, 58)))
    assert editor.session_id != old_session
    assert [seeded for _, seeded in recorder.sent[-2:]] == [True, False]


def test_click_outside_the_volume_is_refused_before_sending(editing) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.volumes import PromptOutsideVolume

    logic, editor, recorder, volume = editing
    with pytest.raises(PromptOutsideVolume, match="outside the volume"):
        logic.addPoint(world_of(volume, (40, 50, 60)))
    assert recorder.sent == []


def test_interaction_honours_segment_editor_masking(editing) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib.segments import add_empty_segment, apply_crop

    logic, editor, recorder, volume = editing
    locked = add_empty_segment(editor.segmentation_node, "bone")
    apply_crop(editor.segmentation_node, locked, volume, (0, 0, 0), np.ones((30, 101, 61), np.uint8))
    logic.segmentEditorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    logic.segmentEditorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    logic.addPoint(world_of(volume, (15, 50, 61)))
    result = segment_voxels(editor)
    assert not result[:, :, :61].any()  # nothing written where painting is not allowed
    (k, j, i), crop = recorder.answers[-1]
    answered = np.zeros_like(result)
    answered[k:k + crop.shape[0], j:j + crop.shape[1], i:i + crop.shape[2]] = crop > 0
    np.testing.assert_array_equal(result[:, :, 61:], answered[:, :, 61:])


def test_self_test_click_reaches_the_bundled_models_dice(logic, shared_data: Path) -> None:  # noqa: ANN001
    """What TSFMSegmentationTest does inside Slicer, on the same held-out sarcoma case and model: the
    whole module path (RAS click, HTTP, crop write) must give the Dice the model card records."""
    import json

    import slicer
    from TSFMSegmentationLib.selftest import one_click_dice

    card = json.loads((mini_slicer.REPO / "Backend" / "tsfm_backend" / "resources" / "models" / "sts-click-small"
                       / "model.json").read_text())
    expected = card["provenance"]["metrics"]["cases"]["STS_005"]["dice"][0]
    case = shared_data / "sts" / "STS_005"
    volume = mini_slicer.load_volume(case / "ct.nii.gz", "sts")
    reference = slicer.util.arrayFromVolume(mini_slicer.load_volume(case / "mask.nii.gz", "mask")).copy()
    assert one_click_dice(logic, volume, reference, "sts-click-small") == pytest.approx(expected, abs=2e-3)


def test_deepest_voxel_and_dice(mini) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.selftest import _deepest_by_erosion, deepest_voxel, dice

    mask = np.zeros((20, 20, 20), bool)
    mask[2:9, 2:9, 2:9] = True      # a 7-voxel cube: its centre is (5, 5, 5)
    mask[12:15, 12:15, 12:15] = True  # a smaller cube is less deep
    assert deepest_voxel(mask) == (5, 5, 5) == _deepest_by_erosion(mask)
    slab = np.zeros((9, 30, 30), bool)
    slab[1:8, 5:26, 5:26] = True  # 7 slices of 3 mm: only the middle one is 10 mm from every border
    assert deepest_voxel(slab, (3.0, 1.0, 1.0)) == (4, 15, 15)
    assert dice(mask, mask) == 1.0 and dice(mask, ~mask) == 0.0
    with pytest.raises(ValueError, match="empty"):
        deepest_voxel(np.zeros((3, 3, 3), bool))


def test_removed_segment_starts_a_new_one(editing) -> None:  # noqa: ANN001
    logic, editor, recorder, volume = editing
    logic.addPoint(world_of(volume, (15, 50, 60)))
    removed = editor.segment_id
    editor.segmentation_node.GetSegmentation().RemoveSegment(removed)
    logic.addPoint(world_of(volume, (15, 50, 60)))
    assert editor.segment_id != removed
    assert recorder.sent[-1][0]["object_id"] == 2
    assert segment_voxels(editor).any() or not recorder.answers[-1][1].any()


def test_each_point_placed_in_a_watched_list_is_one_click(editing) -> None:  # noqa: ANN001
    from TSFMSegmentationLib import prompts

    logic, editor, recorder, volume = editing
    positive = prompts.create_prompt_list(prompts.POSITIVE_ROLE)
    negative = prompts.create_prompt_list(prompts.NEGATIVE_ROLE)
    errors: list[Exception] = []
    editor.watch(positive, on_error=errors.append)
    editor.watch(positive, on_error=errors.append)  # watching again replaces: one click, one prompt
    editor.watch(negative, on_error=errors.append)
    positive.AddControlPoint(*world_of(volume, (15, 50, 60)))
    negative.AddControlPoint(*world_of(volume, (15, 52, 63)))
    positive.AddControlPoint(*world_of(volume, (45, 50, 60)))  # outside the image: reported, not sent
    assert [(s["point"], s["positive"]) for s, _ in recorder.sent] == [([15, 50, 60], True), ([15, 52, 63], False)]
    assert len(errors) == 1 and "outside the volume" in str(errors[0])
    editor.close()
    positive.AddControlPoint(*world_of(volume, (14, 50, 60)))
    assert len(recorder.sent) == 2  # no longer watched


def test_watched_box_is_sent_when_a_handle_drag_ends(editing) -> None:  # noqa: ANN001
    import slicer

    logic, editor, recorder, volume = editing
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    editor.watch_box(roi)
    roi.SetSize(30.0, 30.0, 12.0)
    roi.SetCenter(*world_of(volume, (15, 50, 60)))
    recorder.sent.clear()
    roi.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)  # what the view sends after a drag
    assert [s["kind"] for s, _ in recorder.sent] == ["box"]
    (k0, j0, i0), (k1, j1, i1) = recorder.sent[0][0]["box"]
    assert k0 <= 15 <= k1 and j0 <= 50 <= j1 and i0 <= 60 <= i1
