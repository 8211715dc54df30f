"""The default click model (universal-click-small) in real sessions: a held-out patient's tumour in CT,
MR and PET, an organ class it never saw, a 2D box, and its card."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from tsfm_backend.checkpoints import LoadedModel, load_model
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference.click_policy import dice, first_click
from tsfm_backend.inference.interactive import Interaction, InteractiveSession
from tsfm_backend.model_card import ModelCardError
from tsfm_backend.store import DEFAULT_INTERACTIVE_MODEL
from tsfm_training.data.heldout_objects import organ_objects

REPO = Path(__file__).resolve().parents[3]
PATIENT = "STS_015"
# Measured one-click Dice of the bundled weights (0.79, 0.36, 0.49, 0.33) minus a margin; the card holds them.
FLOORS = {"CT": 0.7, "MR": 0.3, "PET": 0.4, "organ": 0.25, "box": 0.5}


@pytest.fixture(scope="module")
def default():
    return load_model(DEFAULT_INTERACTIVE_MODEL)


def one_click(loaded, volume, reference, modality):
    session = InteractiveSession(loaded, volume, modality=modality)
    session.interact(Interaction("point", True, point=first_click(reference, volume.spacing_kji).point))
    return dice(session.mask(1), reference)


def test_card_records_modalities_data_and_stages(default):
    card = default.card
    assert card.id == DEFAULT_INTERACTIVE_MODEL and card.kind == "promptable" and card.family == "click_unet"
    assert card.normalization["scheme"] == "by_modality" and set(card.normalization) >= {"CT", "MR", "PET"}
    data = card.provenance["data"]
    assert PATIENT in data["validation_cases"] and PATIENT not in data["training_cases"]
    assert not any(name.startswith(tuple(data["validation_cases"])) for name in data["volumes"])
    heldout = card.provenance["config"]["data"]["totalseg"]["heldout_classes"]
    assert set(heldout) == set(card.provenance["config"]["evaluation"]["organ_classes"])
    stages = card.provenance["training"]["stages"]
    assert [Path(stage["config"]).name for stage in stages][-3:] == [
        "interactive_augment.yaml", "interactive_universal.yaml", "interactive_universal_refine.yaml"]
    assert all((REPO / stage["config"]).is_file() for stage in stages)
    assert set(card.provenance["metrics"]["groups"]) == {"sarcoma CT", "sarcoma MR", "sarcoma PET",
                                                         "organs (unseen classes)"}
    assert (REPO / "Backend/tsfm_backend/resources/models" / card.id / "model.safetensors").stat().st_size < 40e6


@pytest.mark.parametrize(("image", "mask", "modality"), [
    ("ct.nii.gz", "mask.nii.gz", "CT"), ("mr_t1.nii.gz", "mr_t1_mask.nii.gz", "MR"),
    ("pet.nii.gz", "pet_mask.nii.gz", "PET"),
])
def test_one_click_segments_a_held_out_tumour_in_each_modality(default, shared_data, image, mask, modality):
    folder = shared_data / "sts" / PATIENT
    volume, reference = read_volume(folder / image), read_volume(folder / mask).array > 0
    assert one_click(default, volume, reference, modality) > FLOORS[modality]


def test_one_click_segments_an_organ_class_it_never_saw(default, shared_data):
    (spleen, *_) = organ_objects(shared_data / "totalseg", ["spleen"])
    assert one_click(default, spleen.volume, spleen.reference, "CT") > FLOORS["organ"]


def test_a_2d_box_on_one_slice_segments_the_tumour(default, shared_data):
    folder = shared_data / "sts" / PATIENT
    volume, reference = read_volume(folder / "ct.nii.gz"), read_volume(folder / "mask.nii.gz").array > 0
    k = int(reference.sum(axis=(1, 2)).argmax())
    rows = reference[k].nonzero()
    box = ((k, int(rows[0].min()), int(rows[1].min())), (k, int(rows[0].max()), int(rows[1].max())))
    session = InteractiveSession(default, volume)
    session.interact(Interaction("box", True, box=box))
    mask = session.mask(1)
    assert dice(mask, reference) > FLOORS["box"] and mask[:k].any() and mask[k + 1:].any()  # a 3D object


def test_corrections_are_local_as_the_card_says(default, shared_data):
    """The default's card asks for local corrections; a session follows the card unless told otherwise."""
    small_ct = read_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    assert default.card.local_corrections is True
    assert default.card.provenance["config"]["model"]["local_corrections"] is True
    assert InteractiveSession(default, small_ct).local_corrections is True
    assert InteractiveSession(default, small_ct, local_corrections=False).local_corrections is False
    assert InteractiveSession(load_model("sts-click-small"), small_ct).local_corrections is False


def test_an_objects_first_mask_takes_the_cards_threshold_and_later_masks_logit_0(default, shared_data):
    (spleen, *_) = organ_objects(shared_data / "totalseg", ["spleen"])
    click = first_click(spleen.reference, spleen.volume.spacing_kji).point
    seeded = spleen.reference.astype("uint8")
    seeded[click[0]:] = 0  # half of the organ: a mask that a correction will change
    assert seeded.any()
    first, corrected = {}, {}
    for logit in (0.0, -2.0):
        loaded = LoadedModel(default.network, replace(default.card, first_mask_logit=logit))
        session = InteractiveSession(loaded, spleen.volume, modality="CT", local_corrections=False)
        session.interact(Interaction("point", True, point=click))
        first[logit] = session.mask(1)
        session.set_mask(2, seeded)
        session.interact(Interaction("point", True, point=click, object_id=2))
        corrected[logit] = session.mask(2)
    assert first[-2.0].sum() > first[0.0].sum() and (first[-2.0] >= first[0.0]).all()
    assert (corrected[-2.0] == corrected[0.0]).all() and (corrected[0.0] != seeded).any()
    with pytest.raises(ModelCardError, match="first_mask_logit"):
        replace(default.card, first_mask_logit="wide")
