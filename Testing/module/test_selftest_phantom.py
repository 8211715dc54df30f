"""The steps of the module's self-test, on the generated phantom and the real server with the default model.

Slicer's self-test (TSFMSegmentationTest) drives the same steps through the Widget's buttons; here they
run through the Logic on real MRML: a click, undo, a 2D box on one slice, review and export.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slicer, pytest.mark.slow]

DEFAULT_MODEL = "universal-click-small"


def test_phantom_workflow_meets_the_self_tests_thresholds(logic, tmp_path) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib import export, selftest
    from TSFMSegmentationLib.volumes import image_geometry

    volume, lesion = selftest.add_phantom()
    assert np.array_equal(slicer.util.arrayFromVolume(volume).shape, lesion.shape)
    defaults = [m["id"] for m in logic.models("promptable") if m.get("default")]
    assert defaults == [DEFAULT_MODEL]
    editor = logic.startInteractive(volume, DEFAULT_MODEL)

    k, j, i = selftest.deepest_voxel(lesion, selftest.PHANTOM_SPACING_KJI)
    logic.addPoint(image_geometry(volume).ijk_to_world_points([[i, j, k]])[0], positive=True)
    click_dice = selftest.dice(selftest.current_segment_mask(editor), lesion)
    assert click_dice >= selftest.MIN_CLICK_DICE
    assert logic.undo() and not selftest.current_segment_mask(editor).any()

    logic.nextSegment("lesion")
    # As the Box button does: a new watched ROI; placed; the button again sends a placed box as it is.
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "prompt box")
    roi.CreateDefaultDisplayNodes()
    errors: list[Exception] = []
    editor.watch_box(roi, on_error=errors.append)
    centre, size = selftest.lesion_box_world(volume, lesion, on_one_slice=True)
    selftest.place_box(roi, centre, size)
    assert roi.GetSize()[2] == 0.0 and roi.GetNumberOfDefinedControlPoints() == 1
    editor.watch_box(roi, on_error=errors.append)
    logic.setBox(roi)
    assert errors == []
    box_dice = selftest.dice(selftest.current_segment_mask(editor), lesion)
    assert box_dice >= selftest.MIN_BOX_DICE

    segmentation = editor.segmentation_node
    with pytest.raises(export.NothingToExportError):
        logic.exportCase(str(tmp_path / "dataset"), "phantom", volume, segmentation)
    logic.reviewSegment(segmentation, editor.segment_id, accepted=True)
    case = logic.exportCase(str(tmp_path / "dataset"), "phantom", volume, segmentation)
    assert case.image.is_file() and case.label.is_file()
