"""Label maps with names (JSON sidecar, Slicer .seg.nrrd read by slicerio) and per-class clean-up."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference.postprocessing import clean_labels, fill_holes, largest_component
from tsfm_backend.label_io import read_labels, sidecar_path, write_labels
from tsfm_backend.volume import Volume


@pytest.fixture
def reference(shared_data) -> Volume:
    return read_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz")


def sample_labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[5:12, 20:40, 30:60] = 3
    labels[14:20, 50:60, 50:70] = 1
    return labels


def test_label_map_with_json_sidecar(tmp_path, reference):
    labels = sample_labels(reference.shape)
    written = write_labels(labels, reference, {1: "liver", 3: "spleen"}, tmp_path / "out" / "case.nii.gz")
    assert written == [tmp_path / "out" / "case.nii.gz", tmp_path / "out" / "case.json"]
    assert json.loads(written[1].read_text()) == {"labels": {"1": "liver", "3": "spleen"}}
    volume, names = read_labels(written[0])
    assert names == {1: "liver", 3: "spleen"}
    np.testing.assert_array_equal(volume.array, labels)
    assert volume.array.dtype == np.uint8
    assert (volume.spacing, volume.origin, volume.direction) == (
        reference.spacing,
        reference.origin,
        reference.direction,
    )


def test_seg_nrrd_has_named_segments_for_slicer(tmp_path, reference):
    import slicerio

    labels = sample_labels(reference.shape)
    path = write_labels(
        labels, reference, {1: "liver", 3: "spleen", 7: "absent"}, tmp_path / "case.seg.nrrd"
    )[0]
    segmentation = slicerio.read_segmentation(str(path))
    segments = {s["labelValue"]: s["name"] for s in segmentation["segments"]}
    assert segments == {1: "liver", 3: "spleen"}, "one segment per present label, with its name"
    np.testing.assert_allclose(segmentation["ijkToLPS"], reference.ijk_to_lps(), atol=1e-5)
    np.testing.assert_array_equal(np.transpose(segmentation["voxels"], (2, 1, 0)), labels)
    volume, names = read_labels(path)
    assert names == {1: "liver", 3: "spleen"}


def test_large_label_values_use_uint16_and_bad_ones_fail(tmp_path, reference):
    labels = sample_labels(reference.shape).astype(np.int32) * 100
    volume, _ = read_labels(write_labels(labels, reference, {300: "x"}, tmp_path / "big.nii.gz")[0])
    assert volume.array.dtype == np.uint16 and volume.array.max() == 300
    with pytest.raises(ValueError, match="0..65535"):
        write_labels(labels - 1, reference, {}, tmp_path / "neg.nii.gz")
    with pytest.raises(ValueError, match="does not match"):
        write_labels(labels[:-1], reference, {}, tmp_path / "short.nii.gz")


def test_sidecar_path():
    from pathlib import Path

    assert sidecar_path(Path("a/b/ct.nii.gz")) == Path("a/b/ct.json")
    assert sidecar_path(Path("ct.mha")) == Path("ct.json")


def test_largest_component_keeps_the_biggest_blob():
    mask = np.zeros((20, 20, 20), bool)
    mask[1:4, 1:4, 1:4] = True
    mask[10:18, 10:18, 10:18] = True
    mask[5, 5, 5] = True
    kept = largest_component(mask)
    assert kept.sum() == 8**3 and kept[12, 12, 12] and not kept[2, 2, 2]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_fill_holes_fills_enclosed_cavities_only():
    mask = np.zeros((12, 12, 12), bool)
    mask[2:10, 2:10, 2:10] = True
    mask[4:6, 4:6, 4:6] = False  # enclosed cavity
    mask[2:10, 7, 7] = False  # a tunnel open at both faces stays open
    filled = fill_holes(mask)
    assert filled[4:6, 4:6, 4:6].all()
    assert not filled[2:10, 7, 7].any()


def test_clean_labels_per_class_without_overwriting_neighbours():
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[2:8, 2:8, 2:8] = 1
    labels[4, 4, 4] = 2  # a class-2 voxel inside class 1 is not a hole to fill
    labels[5, 5, 5] = 0  # a real hole
    labels[12, 12, 12] = 1  # a stray class-1 voxel
    labels[10:14, 2:6, 2:6] = 2
    filled = clean_labels(labels, holes=True)
    assert filled[5, 5, 5] == 1 and filled[4, 4, 4] == 2 and filled[12, 12, 12] == 1
    out = clean_labels(labels, largest=True, holes=True)
    assert out[12, 12, 12] == 0 and out[5, 5, 5] == 1
    assert out[4, 4, 4] == 0, "the lone class-2 voxel is not class 2's largest component"
    assert out[11, 3, 3] == 2
    assert clean_labels(labels) is labels
