"""Label maps reach their image's grid by position: flipped or transposed copies of the same lattice are
arranged exactly, other lattices are refused with both geometries named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tsfm_backend.grid_alignment import GridMismatchError, labels_on_image_grid
from tsfm_backend.image_io import read_volume
from tsfm_backend.volume import Volume


def _image() -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.integers(0, 50, size=(4, 5, 6)).astype(np.int16), spacing=(0.8, 0.9, 2.5),
                  origin=(-10.0, 20.0, 30.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_the_same_geometry_gives_the_array_unchanged():
    image = _image()
    assert np.array_equal(labels_on_image_grid(image, image), image.array)


def test_a_label_map_stored_with_its_j_axis_reversed_is_flipped_back():
    image = _image()
    spacing_j = image.spacing[1]
    last_j = image.origin[1] + spacing_j * (image.shape[1] - 1)
    stored = Volume(image.array[:, ::-1, :].copy(), image.spacing, (image.origin[0], last_j, image.origin[2]),
                    (1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert not np.array_equal(stored.array, image.array)
    assert np.array_equal(labels_on_image_grid(stored, image), image.array)


def test_a_label_map_stored_with_swapped_axes_is_transposed_back():
    image = _image()
    # Label axes (I, J, K) run along the image's (J, I, K): a transposed array with swapped direction columns.
    stored = Volume(image.array.transpose(0, 2, 1).copy(), (image.spacing[1], image.spacing[0], image.spacing[2]),
                    image.origin, (0, 1, 0, 1, 0, 0, 0, 0, 1))
    assert np.array_equal(labels_on_image_grid(stored, image), image.array)


@pytest.mark.parametrize("change, words", [
    ({"origin": (-10.4, 20.0, 30.0)}, "not on its image's voxel grid"),
    ({"spacing": (0.8, 0.9, 3.0)}, "not on its image's voxel grid"),
    ({"origin": (-10.0, 20.9, 30.0)}, "covers another part of space"),
])
def test_another_lattice_is_refused_with_both_geometries(change, words):
    image = _image()
    fields = {"spacing": image.spacing, "origin": image.origin, "direction": image.direction, **change}
    other = Volume(image.array, **fields)
    with pytest.raises(GridMismatchError, match=words) as raised:
        labels_on_image_grid(other, image, "mask.nii.gz")
    assert "mask.nii.gz" in str(raised.value) and str(image.shape) in str(raised.value)


def test_totalsegmentators_dicom_segmentation_lands_on_the_organs(shared_data):
    """Its NIfTI runs along J the other way than the DICOM series: index by index the spleen would sit
    on air and fat (mean about -380 HU); by position it sits on contrast-enhanced spleen."""
    root = shared_data / "totalseg"
    image = read_volume(root / "example_ct_dicom")
    stored = read_volume(root / "example_seg_dicom.nii.gz")
    names = {v: int(k) for k, v in json.loads((root / "totalsegmentator_class_map.json").read_text())["total"].items()}
    labels = labels_on_image_grid(stored, image)
    spleen_hu = float(image.array[labels == names["spleen"]].mean())
    vertebra_hu = float(image.array[labels == names["vertebrae_T12"]].mean())
    assert 30 < spleen_hu < 200 and vertebra_hu > 150
    assert float(image.array[stored.array == names["spleen"]].mean()) < -200
