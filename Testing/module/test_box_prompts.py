"""Box (ROI) prompts as Slicer's views make them, against the real server.

An ROI is placed in a slice view with two clicks. Slicer's markups widget turns each mouse move in
place mode into a preview control point and each click into a defined one, both through
``vtkMRMLMarkupsDisplayNode::UpdateActiveControlPointWorld`` (vtkSlicerMarkupsWidget::UpdatePreviewPoint
and ::PlacePoint); the ROI node derives its centre and size from those points. ``SliceViewPlacement``
makes the same calls on a real ROI node, so the node emits the events it emits in Slicer, in the same
order: after the first click a defined point with size 0, then the preview stage, then at the second
click the finished box. A drag of an ROI handle is what vtkSlicerMarkupsInteractionWidget does:
PointStartInteractionEvent, SetCenterWorld and SetSize at each move, PointEndInteractionEvent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import mini_slicer
from support.mini_slicer import add_parent_transform, make_oblique, rotation

pytestmark = [pytest.mark.slicer, pytest.mark.slow]


class SliceViewPlacement:
    """A slice view rotated to the volume's plane (as Slicer shows a volume) through one voxel, and what
    the markups widget of that view does to an ROI node while the user places or drags it."""

    def __init__(self, volume, kji: tuple[int, int, int]) -> None:  # noqa: ANN001
        import slicer
        from TSFMSegmentationLib.volumes import image_geometry, vtk_matrix_to_numpy

        self.slice_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode", "Red")
        self.slice_node.SetLayoutName("Red")
        self.slice_node.RotateToVolumePlane(volume)
        centre = image_geometry(volume).ijk_to_world_points([[kji[2], kji[1], kji[0]]])[0]
        self.slice_node.JumpSliceByCentering(*centre)
        self.slice_to_ras = vtk_matrix_to_numpy(self.slice_node.GetSliceToRAS())
        self.interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")

    def in_plane(self, x_mm: float, y_mm: float) -> np.ndarray:
        """World RAS of a point of the slice plane, (x, y) mm from the view's centre."""
        return (self.slice_to_ras @ np.array([x_mm, y_mm, 0.0, 1.0]))[:3]

    def start_placing(self, roi) -> None:  # noqa: ANN001
        import slicer

        selection = slicer.mrmlScene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsROINode")
        selection.SetActivePlaceNodeID(roi.GetID())
        self.interaction.SetPlaceModePersistence(0)
        self.interaction.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.Place)

    def _update_point(self, roi, ras: np.ndarray, status: int) -> None:  # noqa: ANN001
        import slicer
        import vtk

        event = slicer.vtkMRMLInteractionEventData()
        event.SetType(vtk.vtkCommand.MouseMoveEvent)
        event.SetViewNode(self.slice_node)
        event.SetWorldPosition([float(v) for v in ras], True)
        previews = [n for n in range(roi.GetNumberOfControlPoints())
                    if roi.GetNthControlPointPositionStatus(n) == roi.PositionPreview]
        index = previews[0] if previews else roi.GetControlPointPlacementStartIndex()
        orientation = [float(v) for v in self.slice_to_ras[:3, :3].ravel()]
        roi.GetDisplayNode().UpdateActiveControlPointWorld(index, event, orientation, self.slice_node.GetID(),
                                                           None, status)

    def move(self, roi, ras: np.ndarray) -> None:  # noqa: ANN001
        """The mouse moves over the view in place mode: the preview point follows it."""
        self._update_point(roi, ras, roi.PositionPreview)

    def click(self, roi, ras: np.ndarray) -> None:  # noqa: ANN001
        """A left click in place mode (vtkSlicerMarkupsWidget::PlacePoint)."""
        import slicer

        roi.GetScene().SaveStateForUndo()
        self._update_point(roi, ras, roi.PositionDefined)
        required = roi.GetRequiredNumberOfControlPoints()
        if required > 0 and roi.GetNumberOfControlPoints() >= required and not roi.GetNumberOfUndefinedControlPoints():
            self.interaction.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.ViewTransform)

    @staticmethod
    def drag_handle(roi, steps: list[tuple[np.ndarray, tuple[float, float, float]]]) -> None:  # noqa: ANN001
        """Press on a scale handle, move through ``steps`` (centre world RAS, size), release."""
        import slicer

        roi.InvokeCustomModifiedEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
        for centre, size in steps:
            roi.SetCenterWorld(*(float(v) for v in centre))
            roi.SetSize(*size)
        roi.InvokeCustomModifiedEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)


def record_interactions(client) -> list[dict | None]:  # noqa: ANN001
    """Each interaction the editor's client sends (None for a re-seed with the segment's voxels)."""
    sent: list[dict | None] = []
    interact = client.interact

    def recording(session_id: str, interaction, mask=None, object_id: int = 1):  # noqa: ANN001, ANN202
        sent.append(interaction)
        return interact(session_id, interaction, mask=mask, object_id=object_id)

    client.interact = recording
    return sent


@pytest.fixture
def oblique_abdomen(logic, small_ct_path: Path):  # noqa: ANN001, ANN201
    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    make_oblique(volume, 25.0)
    add_parent_transform(volume, rotation("z", -35.0))
    editor = logic.startInteractive(volume, "tiny-click")
    return editor, record_interactions(editor.client), volume


def test_roi_placed_with_two_clicks_in_a_slice_view_is_sent_once(oblique_abdomen) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib.volumes import image_geometry

    editor, sent, volume = oblique_abdomen
    view = SliceViewPlacement(volume, (15, 50, 60))
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "prompt box")
    roi.CreateDefaultDisplayNodes()
    errors: list[Exception] = []
    editor.watch_box(roi, on_error=errors.append)
    editor.watch_box(roi, on_error=errors.append)  # again, e.g. the Box button pressed twice
    view.start_placing(roi)

    first, second = view.in_plane(-15.0, -10.0), view.in_plane(18.0, 12.0)
    view.move(roi, first)
    view.click(roi, first)
    # Slicer's state after the first click: one defined point of the two a box needs, size 0.
    assert roi.GetNumberOfDefinedControlPoints() == 1 and roi.GetRequiredNumberOfControlPoints() == 2
    assert roi.GetSize() == (0.0, 0.0, 0.0)
    for t in (0.3, 0.7, 1.0):  # the box follows the mouse as a preview
        view.move(roi, first + t * (second - first))
    assert roi.GetSize() != (0.0, 0.0, 0.0)
    assert sent == [] and errors == []
    view.click(roi, second)

    assert errors == []
    assert [s["kind"] for s in sent] == ["box"]
    assert roi.GetNumberOfControlPoints() == 1 and roi.GetRequiredNumberOfControlPoints() == 1
    # The ROI keeps Slicer's RAS frame: two clicks on the oblique slice span all three of its axes.
    assert min(roi.GetSize()) > 0
    (k0, j0, i0), (k1, j1, i1) = sent[0]["box"]
    assert k0 <= 15 <= k1 and j0 <= 50 <= j1 and i0 <= 60 <= i1
    assert editor.segmentation_node.GetSegmentation().GetNumberOfSegments() == 1

    # One prompt per handle drag, although watch_box was called twice.
    centre = np.array(roi.GetCenterWorld())
    size = np.array(roi.GetSize())
    view.drag_handle(roi, [(centre + np.array([step, 0.0, 0.0]), tuple(size + np.array([2.0 * step, 0.0, 0.0])))
                           for step in (1.0, 2.0, 3.0)])  # the R face moves 6 mm to the right
    assert len(sent) == 2 and sent[1]["box"] != sent[0]["box"]
    view.drag_handle(roi, [])  # a handle clicked without moving: the same box, nothing new to say
    assert len(sent) == 2

    # The top face dragged onto the bottom one: a rectangle on one slice, sent as a 2D box across the
    # volume's slices (the voxel layer through the ROI's centre).
    centre, size = np.array(roi.GetCenterWorld()), roi.GetSize()
    view.drag_handle(roi, [(centre, (size[0], size[1], size[2] / 2)), (centre, (size[0], size[1], 0.0))])
    assert errors == [] and len(sent) == 3
    low, high = (np.array(corner) for corner in sent[2]["box"])
    assert list(low == high) == [True, False, False]
    centre_kji = image_geometry(volume).world_to_ijk(np.array([centre]))[0][::-1]
    assert low[0] == round(centre_kji[0])

    # After close nothing is watched any more.
    editor.close()
    view.drag_handle(roi, [(centre, (size[0], size[1], 10.0))])
    assert len(sent) == 3


def test_box_while_placing_is_silent_and_a_rod_is_reported(oblique_abdomen) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib.prompts import BoxTooSmall
    from TSFMSegmentationLib.volumes import image_geometry, numpy_to_vtk_matrix

    editor, sent, volume = oblique_abdomen
    geometry = image_geometry(volume)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "line")
    object_to_world = np.eye(4)  # along the volume's axes
    object_to_world[:3, :3] = geometry.ijk_to_world[:3, :3] / np.array(geometry.spacing)
    object_to_world[:3, 3] = geometry.ijk_to_world_points([(60.0, 50.0, 15.0)])[0]
    roi.SetAndObserveObjectToNodeMatrix(numpy_to_vtk_matrix(object_to_world))
    errors: list[Exception] = []
    editor.watch_box(roi, on_error=errors.append)
    roi.SetSize(30.0, 0.0, 0.0)  # zero along two axes: not a box yet
    SliceViewPlacement.drag_handle(roi, [])
    assert roi.GetNumberOfDefinedControlPoints() == 1
    assert sent == [] and errors == []
    centre = object_to_world[:3, 3]
    SliceViewPlacement.drag_handle(roi, [(centre, (30.0, 0.5, 0.5))])  # thinner than a voxel along j and k
    assert sent == [] and len(errors) == 1 and isinstance(errors[0], BoxTooSmall)


def test_flat_box_on_a_slice_segments_the_tumour_on_that_slice(logic, shared_data: Path) -> None:  # noqa: ANN001
    """A rectangle drawn around a sarcoma on one slice of an oblique CT: the bundled model's answer on
    that slice is the tumour."""
    import slicer
    from TSFMSegmentationLib.selftest import deepest_voxel, dice
    from TSFMSegmentationLib.volumes import image_geometry, numpy_to_vtk_matrix

    case = shared_data / "sts" / "STS_005"
    volume = mini_slicer.load_volume(case / "ct.nii.gz", "sts")
    reference = slicer.util.arrayFromVolume(mini_slicer.load_volume(case / "mask.nii.gz", "mask")) > 0
    make_oblique(volume, 25.0)
    add_parent_transform(volume, rotation("z", -35.0))
    geometry = image_geometry(volume)
    k = deepest_voxel(reference, tuple(reversed(geometry.spacing)))[0]
    j, i = np.nonzero(reference[k])
    low, high = np.array([i.min() - 2, j.min() - 2, k]), np.array([i.max() + 2, j.max() + 2, k])

    # Drawn in a slice view rotated to the volume's plane: the ROI's frame is the volume's axes.
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box on slice")
    object_to_world = np.eye(4)
    object_to_world[:3, :3] = geometry.ijk_to_world[:3, :3] / np.array(geometry.spacing)
    object_to_world[:3, 3] = geometry.ijk_to_world_points([(low + high) / 2.0])[0]
    roi.SetSize(*((high - low) * np.array(geometry.spacing)))
    roi.SetAndObserveObjectToNodeMatrix(numpy_to_vtk_matrix(object_to_world))

    editor = logic.startInteractive(volume, "sts-click-small")
    sent = record_interactions(editor.client)
    errors: list[Exception] = []
    editor.watch_box(roi, on_error=errors.append)
    roi.InvokeCustomModifiedEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    assert errors == []
    assert [s["box"] for s in sent if s] == [[[k, *low[1::-1].tolist()], [k, *high[1::-1].tolist()]]]
    result = slicer.util.arrayFromSegmentBinaryLabelmap(editor.segmentation_node, editor.segment_id, volume) > 0
    assert dice(result[k], reference[k]) > 0.8
    assert (result & reference).sum() > 0.9 * result.sum()  # what it adds elsewhere is tumour too


def test_two_clicks_on_an_axial_slice_draw_a_2d_box(logic, small_ct_path: Path) -> None:  # noqa: ANN001
    """On a volume along the RAS axes the slice view is axial: Slicer gives the placed ROI a depth (its
    shorter side), the module makes it flat again, and the prompt is a 2D box on the clicked slice."""
    import slicer

    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    editor = logic.startInteractive(volume, "tiny-click")
    sent = record_interactions(editor.client)
    view = SliceViewPlacement(volume, (12, 50, 60))
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "prompt box")
    roi.CreateDefaultDisplayNodes()
    errors: list[Exception] = []
    editor.watch_box(roi, on_error=errors.append)
    view.start_placing(roi)
    first, second = view.in_plane(-20.0, -12.0), view.in_plane(16.0, 14.0)
    view.move(roi, first)
    view.click(roi, first)
    view.move(roi, second)
    assert roi.GetSize()[2] > 0  # while placing, Slicer pads the depth
    view.click(roi, second)

    assert errors == [] and [s["kind"] for s in sent] == ["box"]
    size = roi.GetSize()
    assert size[2] == 0.0 and min(size[0], size[1]) > 20.0
    (k0, j0, i0), (k1, j1, i1) = sent[0]["box"]
    assert k0 == k1 == 12 and j1 - j0 >= 6 and i1 - i0 >= 8

    # A handle drag in the plane keeps it a rectangle on that slice.
    centre = np.array(roi.GetCenterWorld())
    view.drag_handle(roi, [(centre + np.array([3.0, 0.0, 0.0]), (size[0] + 6.0, size[1], 0.0))])
    assert len(sent) == 2 and sent[1]["box"][0][0] == sent[1]["box"][1][0] == 12
