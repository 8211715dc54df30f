"""Volume geometry on real MRML nodes: oblique, flipped and transformed volumes against SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support.mini_slicer import add_parent_transform, make_oblique, rotation

pytestmark = pytest.mark.slicer


def hardened_copy_as_sitk(volume_node, tmp_path: Path) -> sitk.Image:  # noqa: ANN001
    """Slicer's own route: harden the transform on a clone, write NIfTI, read with SimpleITK (LPS)."""
    import slicer

    clone = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "clone")
    clone.Copy(volume_node)
    clone.SetAndObserveImageData(volume_node.GetImageData())
    clone.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    slicer.vtkSlicerTransformLogic().hardenTransform(clone)
    path = tmp_path / "hardened.nii.gz"
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    slicer.mrmlScene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(clone)
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("transformed", [False, True])
def test_payload_geometry_matches_slicer_hardened_volume(ct_node, tmp_path: Path, transformed: bool) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.volumes import image_payload

    make_oblique(ct_node)
    if transformed:
        add_parent_transform(ct_node, rotation("y", -30.0) @ np.array(
            [[1, 0, 0, 12.5], [0, 1, 0, -40.0], [0, 0, 1, 7.0], [0, 0, 0, 1]]))
    payload = image_payload(ct_node)
    reference = hardened_copy_as_sitk(ct_node, tmp_path)

    assert payload.array.shape == (30, 101, 122)
    np.testing.assert_array_equal(payload.array, sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(payload.spacing, reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(payload.origin, reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(payload.direction, reference.GetDirection(), atol=1e-5)


def test_world_to_voxel_on_oblique_flipped_transformed_volume(ct_node) -> None:  # noqa: ANN001
    import vtk
    from TSFMSegmentationLib.volumes import PromptOutsideVolume, image_geometry, world_to_kji

    make_oblique(ct_node, 40.0)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # a left-right flip through the parent transform
    add_parent_transform(ct_node, flip @ rotation("z", 15.0))
    geometry = image_geometry(ct_node)
    transform = ct_node.GetParentTransformNode()
    ijk_to_ras = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(ijk_to_ras)
    for kji in [(0, 0, 0), (29, 100, 121), (12, 37, 80), (3, 90, 5)]:
        # Slicer's own forward path: voxel -> node RAS -> world through the transform node.
        ras = ijk_to_ras.MultiplyPoint([kji[2], kji[1], kji[0], 1.0])[:3]
        world = np.array(transform.GetTransformToParent().TransformPoint(ras))
        near_world = world + np.array([0.4, -0.7, 0.5])  # well inside half a 3 mm voxel
        assert world_to_kji(geometry, tuple(world)) == kji
        assert world_to_kji(geometry, tuple(near_world)) == kji
    with pytest.raises(PromptOutsideVolume, match="outside the volume"):
        world_to_kji(geometry, tuple(geometry.ijk_to_world_points([[130.0, 0, 0]])[0]))


def test_box_corners_become_inclusive_voxel_box(ct_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.volumes import PromptOutsideVolume, image_geometry, world_box_to_kji

    make_oblique(ct_node)
    geometry = image_geometry(ct_node)
    corners_ijk = np.array([[i, j, k] for i in (10, 40) for j in (5, 60) for k in (2, 20)], float)
    box = world_box_to_kji(geometry, geometry.ijk_to_world_points(corners_ijk))
    assert box == ((2, 5, 10), (20, 60, 40))
    clipped = world_box_to_kji(geometry, geometry.ijk_to_world_points(corners_ijk + [100, 0, 0]))
    assert clipped == ((2, 5, 110), (20, 60, 121))
    with pytest.raises(PromptOutsideVolume, match="does not cover"):
        world_box_to_kji(geometry, geometry.ijk_to_world_points(corners_ijk + [500, 0, 0]))


def test_nonlinear_parent_transform_is_refused(ct_node) -> None:  # noqa: ANN001
    import slicer
    from TSFMSegmentationLib.volumes import VolumeGeometryError, image_payload

    grid = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    ct_node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(VolumeGeometryError, match="non-linear transform 'warp'"):
        image_payload(ct_node)


def test_sheared_parent_transform_is_refused(ct_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.volumes import VolumeGeometryError, image_payload

    shear = np.eye(4)
    shear[0, 1] = 0.3
    add_parent_transform(ct_node, shear)
    with pytest.raises(VolumeGeometryError, match="sheared"):
        image_payload(ct_node)


def test_dicom_modality_is_read_from_slicer_s_dicom_database(ct_node, monkeypatch) -> None:  # noqa: ANN001
    """Volumes loaded from DICOM carry their instance UIDs; the database gives the Modality tag of the first."""
    import slicer
    from TSFMSegmentationLib.volumes import dicom_modality

    assert dicom_modality(ct_node) is None  # loaded from a file: nothing to read

    class Database:  # the edge: Slicer's ctkDICOMDatabase, as DICOMScalarVolumePlugin leaves it
        def fileForInstance(self, uid: str) -> str:  # noqa: N802
            return {"1.2.3": "/dicom/pet/1.dcm"}.get(uid, "")

        def fileValue(self, filename: str, tag: str) -> str:  # noqa: N802
            return "PT" if (filename, tag) == ("/dicom/pet/1.dcm", "0008,0060") else ""

    monkeypatch.setattr(slicer, "dicomDatabase", Database(), raising=False)
    ct_node.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")
    assert dicom_modality(ct_node) == "PT"
    ct_node.SetAttribute("DICOM.instanceUIDs", "9.9")
    assert dicom_modality(ct_node) is None
