"""The click model's object pool: tumours in three modalities, organs without the held-out classes,
pseudo-objects that avoid them, and the held-out objects the benchmark scores."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import ndimage
from tsfm_training.data import click_objects, heldout_objects
from tsfm_training.recipes import interactive

SPACING = (3.0, 2.0, 2.0)
NORMALIZATION = {"scheme": "by_modality", "CT": {"scheme": "hu_window", "lower": -250.0, "upper": 350.0},
                 "MR": {"scheme": "percentile_window", "lower_percentile": 0.5, "upper_percentile": 99.5},
                 "PET": {"scheme": "percentile_window", "lower_percentile": 0.5, "upper_percentile": 99.5}}


def blobs() -> tuple[np.ndarray, np.ndarray]:
    """A normalised image with two bright cubes and one dark cube on mid-grey; and the dark cube's mask."""
    image = np.full((24, 48, 48), 0.5, np.float32)
    image[4:12, 4:16, 4:16] = 0.9
    image[4:12, 30:44, 30:44] = 0.9
    image[14:22, 10:30, 10:30] = 0.1
    dark = np.zeros(image.shape, bool)
    dark[14:22, 10:30, 10:30] = True
    return image, dark


def test_pseudo_objects_are_connected_regions_of_bounded_size_that_avoid_excluded_voxels():
    image, dark = blobs()
    bright = image > 0.8
    labels = click_objects.pseudo_object_labels(image, np.random.default_rng(0), count=10, min_voxels=50,
                                                max_voxels=5000)
    found = [labels == v for v in np.unique(labels) if v]
    assert found and all(50 <= region.sum() <= 5000 and ndimage.label(region)[1] == 1 for region in found)
    assert any((region & bright).sum() >= 0.7 * region.sum() / 2 for region in found)  # a cube, blurred
    avoided = click_objects.pseudo_object_labels(image, np.random.default_rng(0), count=10, min_voxels=50,
                                                 excluded=dark)
    assert avoided.any() and not avoided[dark].any()


def test_objects_list_their_boxes_and_random_voxels_fall_inside():
    image, dark = blobs()
    volume = click_objects.ObjectVolume("v", "p", "CT", "tumour", image, dark.astype(np.uint16), {1: "x"})
    (obj,) = click_objects.list_objects([volume])
    assert (obj.low, obj.high) == ((14, 10, 10), (21, 29, 29))
    rng = np.random.default_rng(0)
    assert all(dark[tuple(click_objects.random_object_voxel(volume, obj, rng))] for _ in range(50))


def test_one_patient_in_three_modalities_and_organs_without_held_out_classes(shared_data):
    data = {"normalization": NORMALIZATION, "modalities": ["ct", "mr_t1", "pet"],
            "totalseg": {"root": str(shared_data / "totalseg"), "heldout_classes": ["spleen", "aorta"]},
            "pseudo_objects": {"per_volume": 4}}
    volumes = interactive.load_volumes(data, shared_data / "sts", ["STS_002"], SPACING, seed=0)
    tumours = [v for v in volumes if v.kind == "tumour"]
    assert [(v.name, v.modality) for v in tumours] == [
        ("STS_002/ct", "CT"), ("STS_002/mr_t1", "MR"), ("STS_002/pet", "PET")]
    assert all(0.0 <= v.image.min() and v.image.max() <= 1.0 and v.labels.any() for v in tumours)
    organs = [v for v in volumes if v.kind == "organ"]
    assert len(organs) == 2 and all(v.modality == "CT" for v in organs)
    assert all("spleen" not in v.names.values() and "aorta" not in v.names.values() for v in organs)
    assert all("liver" in v.names.values() for v in organs)
    # Bone is bright in the HU window on both CTs (labels arranged on each CT's voxels by position).
    for volume in organs:
        bone = volume.labels == next(k for k, name in volume.names.items() if name == "vertebrae_T12")
        assert volume.image[bone].mean() > 0.6
    kinds = Counter(o.kind for o in click_objects.list_objects(volumes))
    assert kinds["tumour"] == 3 and kinds["organ"] > 20 and 0 < kinds["pseudo"] <= 4 * len(volumes) // 2
    batches = interactive.ClickBatches(volumes, SPACING, 5.0, [(16, 32, 32)], [3],
                                       interactive.SimulationConfig(), seed=0,
                                       kind_weights={"tumour": 1.0, "organ": 0.0, "pseudo": 0.0})
    drawn = {batches.volumes[batches.draw_object().volume].kind for _ in range(20)}
    assert drawn == {"tumour"}
    batch = next(batches)
    assert batch["image"].shape == (3, 5, 16, 32, 32) and bool((batch["label"].flatten(1).sum(1) > 0).all())


def test_kind_weights_must_name_known_kinds(shared_data):
    image, dark = blobs()
    volume = click_objects.ObjectVolume("v", "p", "CT", "tumour", image, dark.astype(np.uint16), {1: "x"})
    with pytest.raises(ValueError, match="unknown object kinds \\['organs'\\]"):
        interactive.ClickBatches([volume], SPACING, 5.0, [(8, 16, 16)], [1], interactive.SimulationConfig(), 0,
                                 kind_weights={"organs": 1.0})


def test_held_out_objects_group_patients_by_modality_and_unseen_organs(shared_data):
    objects = heldout_objects.heldout_objects(shared_data, ["STS_005"], ["ct", "pet"], ["spleen", "vertebrae_T12"])
    groups = Counter(o.group for o in objects)
    assert groups == {"sarcoma CT": 1, "sarcoma PET": 1, heldout_objects.ORGAN_GROUP: 4}
    assert all(o.reference.shape == o.volume.shape and o.reference.sum() >= 200 for o in objects)
    # On bone in both CTs: the DICOM one's segmentation is stored mirrored along J and must be arranged by position.
    vertebrae = [o for o in objects if o.name.startswith("vertebrae_T12@")]
    assert len(vertebrae) == 2 and all(o.volume.array[o.reference].mean() > 150 for o in vertebrae)
    with pytest.raises(ValueError, match="not TotalSegmentator"):
        heldout_objects.organ_objects(shared_data / "totalseg", ["spleeen"])
