"""``tsfm-backend segment`` on a real CT stored with a flipped, oblique orientation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from tsfm_backend.cli import main
from tsfm_backend.commands.segment import to_voxel, to_voxel_index
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference.click_policy import dice, first_click

CASE = "STS_015"


def oblique_direction() -> tuple[float, ...]:
    """Columns: I rotated 30 degrees in the axial plane, J flipped, K flipped (a proper orthonormal basis)."""
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    flips = np.diag([1.0, -1.0, -1.0])
    return tuple((rotation @ flips).ravel())


@pytest.fixture(scope="module")
def oblique_case(shared_data, tmp_path_factory):
    image = sitk.ReadImage(str(shared_data / "sts" / CASE / "ct.nii.gz"))
    image.SetDirection(oblique_direction())
    image.SetOrigin((12.5, -40.0, 300.0))
    folder = tmp_path_factory.mktemp("oblique")
    path = folder / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    reference = read_volume(shared_data / "sts" / CASE / "mask.nii.gz").array > 0
    return path, read_volume(path), reference


def world(volume, kji, coords):
    k, j, i = kji
    lps = volume.ijk_to_lps() @ np.array([i, j, k, 1.0])
    if coords == "lps":
        return lps[:3]
    if coords == "ras":
        return lps[:3] * np.array([-1.0, -1.0, 1.0])
    return np.array([i, j, k], dtype=float)


def test_world_points_map_back_to_their_voxel(oblique_case):
    _, volume, _ = oblique_case
    matrix = volume.ijk_to_lps()
    for kji in [(0, 0, 0), (5, 17, 101), tuple(n - 1 for n in volume.shape)]:
        for coords in ("ras", "lps", "ijk"):
            assert to_voxel(world(volume, kji, coords), coords, matrix, volume.shape, "--point") == kji
    # Half a voxel off still lands on the voxel; the continuous index is exact.
    shifted = world(volume, (5, 17, 101), "ijk") + 0.4
    assert to_voxel(shifted, "ijk", matrix, volume.shape, "--point") == (5, 17, 101)
    assert np.allclose(to_voxel_index(world(volume, (5, 17, 101), "ras"), "ras", matrix), [101, 17, 5])


def test_segment_gives_one_mask_in_every_coordinate_system(oblique_case, tmp_path, capsys):
    path, volume, reference = oblique_case
    click = first_click(reference, volume.spacing_kji).point
    masks = {}
    for coords in ("ras", "lps", "ijk"):
        point = ",".join(f"{v:.4f}" for v in world(volume, click, coords))
        output = tmp_path / f"mask_{coords}.nii.gz"
        assert main(["segment", "-i", str(path), "-o", str(output), f"--point={point}", "--coords", coords]) == 0
        written = read_volume(output)
        assert written.direction == pytest.approx(volume.direction) and written.origin == pytest.approx(volume.origin)
        masks[coords] = written.array
    assert "voxels" in capsys.readouterr().out
    assert np.array_equal(masks["ras"], masks["lps"]) and np.array_equal(masks["ras"], masks["ijk"])
    assert dice(masks["ras"], reference) > 0.5


@pytest.mark.parametrize(("arguments", "message"), [
    (["--point", "100000,0,0", "--coords", "ijk"], "--point 100000,0,0 (ijk) is outside the image"),
    (["--point", "1,2"], "must be 3 comma-separated numbers"),
    (["--box", "10,10,5,40,10,5", "--coords", "ijk"], "zero size along k and j"),
    (["--negative", "10,10,5", "--coords", "ijk"], "at least one --point or --box"),
])
def test_bad_prompts_exit_2_with_a_clear_message(oblique_case, tmp_path, capsys, arguments, message):
    path, _, _ = oblique_case
    code = main(["segment", "-i", str(path), "-o", str(tmp_path / "m.nii.gz"), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists()
