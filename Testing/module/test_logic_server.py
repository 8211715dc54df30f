"""The module's Logic against a real ``tsfm-backend serve`` process started the way the module starts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import mini_slicer
from support.mini_slicer import add_parent_transform, make_oblique, rotation

pytestmark = [pytest.mark.slicer, pytest.mark.slow]

CLASSES = {1: "liver", 2: "spleen", 3: "kidney_left"}  # the classes of the suite's "tiny-organs" model


def test_module_logic_reports_device_and_models(logic) -> None:  # noqa: ANN001
    summary, warning = logic.backendSummary()
    assert summary.startswith("CPU") and "torch" in summary
    assert "CPU" in warning
    models = logic.models()
    assert sorted(m["id"] for m in models) == ["sts-click-small", "tiny-click", "tiny-organs",
                                               "universal-click-small"]
    assert sorted(m["id"] for m in logic.models(kind="promptable")) == ["sts-click-small", "tiny-click",
                                                                        "universal-click-small"]


def test_automatic_round_trip_on_oblique_transformed_ct_is_exact(logic, small_ct_path: Path) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib import provenance

    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    make_oblique(volume, 30.0)
    add_parent_transform(volume, rotation("y", 25.0) @ np.array(
        [[1, 0, 0, -5.0], [0, 1, 0, 3.0], [0, 0, 1, 40.0], [0, 0, 0, 1]]))
    progress: list[float] = []
    segmentation = logic.segment(volume, "tiny-organs", options={"amp": False},
                                 progressCallback=lambda status: progress.append(status.progress))

    labels, names = logic.connection.client.job_result(logic.lastJob.job_id)
    assert labels.shape == (30, 101, 122)
    assert names == CLASSES
    assert segmentation.GetTransformNodeID() == volume.GetTransformNodeID()
    present = [int(v) for v in np.unique(labels) if v]
    assert present, "the tiny model should label something"
    from TSFMSegmentationLib.segments import segment_ids

    by_name = {segmentation.GetSegmentation().GetSegment(sid).GetName(): sid for sid in segment_ids(segmentation)}
    expected_names = {1: "Liver", 2: "Spleen", 3: "Left kidney"}
    assert set(by_name) == {expected_names[v] for v in present}
    for value in present:
        voxels = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, by_name[expected_names[value]], volume)
        np.testing.assert_array_equal(voxels > 0, labels == value)
        record = provenance.describe(segmentation, by_name[expected_names[value]], volume)
        assert record["model"] == "tiny-organs" and record["source"] == "automatic" and not record["edited"]
    assert progress == sorted(progress)


def test_cancel_stops_a_running_job(logic, small_ct_path: Path) -> None:  # noqa: ANN001
    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    job = logic.startSegmentation(volume, "tiny-organs", options={"amp": False, "tta": True, "step": 0.25})
    logic.cancelSegmentation()
    status = job.wait(poll_s=0.1, timeout_s=60)
    assert status.state in ("cancelled", "done")  # a tiny model may finish before the cancel arrives
    if status.state == "cancelled":
        from TSFMSegmentationLib.logic_jobs import JobFailed

        with pytest.raises(JobFailed, match="cancelled"):
            logic.finishSegmentation()


def test_unknown_model_is_a_clear_error(logic, small_ct_path: Path) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.client import BackendError

    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    with pytest.raises(BackendError, match="no-such-model"):
        logic.segment(volume, "no-such-model")


def test_remote_upload_needs_confirmation(mini, small_ct_path: Path) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.client import BackendClient
    from TSFMSegmentationLib.logic_connection import UploadDeclined

    from TSFMSegmentation import TSFMSegmentationLogic

    asked: list[str] = []
    logic = TSFMSegmentationLogic()
    logic.connection.confirm_upload = lambda url: asked.append(url) or False
    logic.connection.mode, logic.connection.client = "remote", BackendClient("http://gpu-server.example:8765")
    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    with pytest.raises(UploadDeclined, match="gpu-server.example"):
        logic.segment(volume, "tiny-organs")
    assert asked == ["http://gpu-server.example:8765"]


def test_token_is_never_saved_with_the_scene(logic, local_backend, small_ct_path: Path, tmp_path: Path) -> None:  # noqa: ANN001
    import slicer

    volume = mini_slicer.load_volume(small_ct_path, "abdomen")
    logic.connectRemote(local_backend.url, token="s3cret-token-value")
    parameters = logic.getParameterNode()
    parameters.remoteUrl = local_backend.url
    parameters.inputVolume = volume
    parameters.useTTA = True
    assert logic.getParameterNode().inputVolume.GetID() == volume.GetID()
    assert logic.getParameterNode().useTTA is True
    scene_file = tmp_path / "scene.mrml"
    slicer.mrmlScene.SetURL(str(scene_file))
    slicer.mrmlScene.Commit()
    text = scene_file.read_text(encoding="utf-8")
    assert local_backend.url in text
    assert "s3cret-token-value" not in text


def test_local_backend_needs_a_python_that_has_it(mini, tmp_path: Path) -> None:  # noqa: ANN001
    from TSFMSegmentation import TSFMSegmentationLogic

    with pytest.raises(RuntimeError, match="Install backend"):
        TSFMSegmentationLogic().startLocalBackend(python=str(tmp_path / "no-python"))
