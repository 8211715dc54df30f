"""Modality detection and per-modality windows on the real CT, MR and PET of one sarcoma patient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tsfm_backend.image_io import read_volume
from tsfm_backend.modality import ModalityError, canonical_modality, detect_modality, resolve_normalization
from tsfm_backend.preprocessing import normalize

CARD = {"scheme": "by_modality", "CT": {"scheme": "hu_window", "lower": -250.0, "upper": 350.0},
        "MR": {"scheme": "percentile_window", "lower_percentile": 0.5, "upper_percentile": 99.5},
        "PET": {"scheme": "percentile_window", "lower_percentile": 0.5, "upper_percentile": 99.5}}


@pytest.fixture(scope="module")
def patient(shared_data):
    folder = shared_data / "sts" / "STS_002"
    return {name: read_volume(folder / f"{name}.nii.gz").array for name in ("ct", "mr_t1", "pet")}


def test_ct_is_told_from_mr_and_pet_by_its_air(patient):
    assert detect_modality(patient["ct"]) == "CT"
    assert detect_modality(patient["mr_t1"]) == "MR"
    assert detect_modality(patient["pet"]) == "MR"  # same window as PET; only the caller can say PET


@pytest.mark.parametrize(("name", "expected"), [("ct", "CT"), ("PT", "PET"), ("pet", "PET"), ("MRI", "MR")])
def test_modality_names_as_users_and_dicom_write_them(name, expected):
    assert canonical_modality(name) == expected


def test_unknown_modality_is_refused_by_name():
    with pytest.raises(ModalityError, match="unknown modality 'US'"):
        canonical_modality("US")


def test_ct_keeps_its_hu_window_and_mr_pet_get_their_percentiles(patient):
    ct = resolve_normalization(CARD, patient["ct"], None)
    assert ct == {"scheme": "hu_window", "lower": -250.0, "upper": 350.0, "modality": "CT"}
    for name, modality in (("mr_t1", "MR"), ("pet", "PET")):
        window = resolve_normalization(CARD, patient[name], modality)
        low, high = np.percentile(patient[name][::2, ::2, ::2], [0.5, 99.5])
        assert window["modality"] == modality and window["scheme"] == "hu_window"
        assert window["lower"] == pytest.approx(low) and window["upper"] == pytest.approx(high)
        image = normalize(torch.from_numpy(patient[name].astype(np.float32)), window)
        assert float(image.min()) == 0.0 and float(image.max()) == 1.0
        assert 0.5 < float((image < 1.0).float().mean()) < 1.0  # most voxels inside the window


def test_other_schemes_pass_through_and_by_modality_must_be_resolved(patient):
    plain = {"scheme": "zscore"}
    assert resolve_normalization(plain, patient["ct"], "MR") == plain
    with pytest.raises(ValueError, match="must be resolved"):
        normalize(torch.zeros(1, 2, 2, 2), CARD)


def test_a_card_without_the_modality_says_which_it_takes(patient):
    ct_only = {"scheme": "by_modality", "CT": CARD["CT"]}
    with pytest.raises(ModalityError, match="normalises CT images, not PET"):
        resolve_normalization(ct_only, patient["pet"], "PT")


def test_a_flat_image_gets_a_non_empty_window():
    window = resolve_normalization(CARD, np.full((4, 4, 4), 7.0), "MR")
    assert window["upper"] > window["lower"] == 7.0
