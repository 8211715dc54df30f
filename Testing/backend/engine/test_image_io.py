"""Reading real NIfTI and DICOM, geometry round trips, and a clear message for every bad input."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from tsfm_backend.image_io import ImageReadError, image_stem, read_volume, write_volume
from tsfm_backend.volume import Volume, VolumeError

# A rotation of 30 degrees about S combined with a flipped I axis: oblique and left-handed.
ANGLE = np.deg2rad(30)
OBLIQUE_FLIPPED = np.array(
    [[-np.cos(ANGLE), -np.sin(ANGLE), 0.0], [-np.sin(ANGLE), np.cos(ANGLE), 0.0], [0.0, 0.0, 1.0]]
)


def test_reads_the_real_nifti_with_its_geometry(shared_data):
    volume = read_volume(shared_data / "totalseg" / "example_ct.nii.gz")
    assert volume.shape == (112, 101, 122)
    assert volume.spacing == (3.0, 3.0, 3.0)
    assert volume.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert volume.array.dtype == np.int32, "integer HU are kept as stored"
    assert volume.array.min() < -900 and volume.array.max() > 500


def test_reads_the_real_dicom_series(shared_data):
    volume = read_volume(shared_data / "totalseg" / "example_ct_dicom")
    assert volume.shape == (20, 512, 512)
    assert volume.spacing[:2] == pytest.approx((0.977, 0.977), abs=1e-3)
    assert volume.spacing[2] == pytest.approx(2.0, abs=1e-3)
    assert volume.array.min() < -900 and volume.array.max() > 500, "rescale slope/intercept applied (HU)"
    # The series is the same scan TotalSegmentator segmented onto this grid.
    reference = sitk.ReadImage(str(shared_data / "totalseg" / "example_seg_dicom.nii.gz"))
    assert reference.GetSize() == (512, 512, 20)
    assert reference.GetOrigin()[2] == pytest.approx(volume.origin[2], abs=1e-2)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_read_round_trip_keeps_oblique_flipped_geometry(tmp_path, suffix):
    array = np.random.default_rng(0).normal(size=(7, 9, 11)).astype(np.float32)
    volume = Volume(array, (0.7, 0.8, 2.5), (10.0, -20.0, 30.5), tuple(OBLIQUE_FLIPPED.ravel()))
    back = read_volume(write_volume(volume, tmp_path / f"img{suffix}"))
    assert back.shape == volume.shape
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)


def test_missing_path(tmp_path):
    with pytest.raises(ImageReadError, match=r"nothing\.nii\.gz: no such file"):
        read_volume(tmp_path / "nothing.nii.gz")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.nii\.gz: file is empty"):
        read_volume(path)


def test_corrupt_file(tmp_path, shared_data):
    raw = gzip.decompress((shared_data / "totalseg" / "example_ct_sm.nii.gz").read_bytes())
    path = tmp_path / "truncated.nii"
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ImageReadError, match=r"truncated\.nii: is corrupt or unreadable"):
        read_volume(path)


def test_truncated_compressed_file(tmp_path, shared_data):
    path = tmp_path / "cut.nii.gz"
    path.write_bytes((shared_data / "totalseg" / "example_ct_sm.nii.gz").read_bytes()[:200_000])
    with pytest.raises(ImageReadError, match=r"cut\.nii\.gz: is corrupt or unreadable"):
        read_volume(path)


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(ImageReadError, match=r"notes\.txt: is not an image format"):
        read_volume(path)


def test_text_disguised_as_nifti(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(gzip.compress(b"hello" * 100))
    with pytest.raises(ImageReadError, match=r"fake\.nii\.gz: is (corrupt|not an image)"):
        read_volume(path)


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.int16)), str(path))
    with pytest.raises(ImageReadError, match=r"slice\.nii\.gz: is a 2D image"):
        read_volume(path)


def test_4d_image(tmp_path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))] * 3), str(path))
    with pytest.raises(ImageReadError, match=r"series\.nii\.gz: is a 4D image"):
        read_volume(path)


def test_vector_image(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(ImageReadError, match=r"rgb\.nrrd: has 3 components per voxel"):
        read_volume(path)


def test_empty_folder(tmp_path):
    with pytest.raises(ImageReadError, match=r"folder is empty"):
        read_volume(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ImageReadError, match=r"holds no DICOM series"):
        read_volume(tmp_path)


def test_single_dicom_slice_is_2d(tmp_path, shared_data):
    source = sorted((shared_data / "totalseg" / "example_ct_dicom").iterdir())[0]
    shutil.copy(source, tmp_path / source.name)
    with pytest.raises(ImageReadError, match=r"is a 2D image"):
        read_volume(tmp_path)


def test_errors_are_value_errors_for_the_cli():
    assert issubclass(ImageReadError, VolumeError) and issubclass(ImageReadError, ValueError)


def test_image_stem():
    from pathlib import Path

    assert image_stem(Path("a/ct.nii.gz")) == "ct"
    assert image_stem(Path("ct.seg.nrrd")) == "ct.seg"
    assert image_stem(Path("case_1.mha")) == "case_1"
