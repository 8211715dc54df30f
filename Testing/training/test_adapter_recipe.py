"""The 3DSAM-adapter recipe: one target label, the authors' augmentation, and a start from SAM's 2D weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tsfm_training.cli import main
from tsfm_training.config import load_config
from tsfm_training.networks import card_from_config
from tsfm_training.recipes.adapter import click_sample_fn, target_mask

REPO = Path(__file__).resolve().parents[2]


def test_only_the_target_labels_are_the_object():
    labels = np.array([[[0, 1, 2, 3]]])
    assert target_mask(labels, [2]).tolist() == [[[0, 0, 1, 0]]]
    assert target_mask(labels, None).tolist() == [[[0, 1, 1, 1]]]


@pytest.fixture(scope="module")
def kidney_like_case(shared_data):
    """A real sarcoma CT on the smoke card's grid; label 2 is the tumour, label 1 a cube elsewhere."""
    from tsfm_training.data.datasets import dataset_from_config
    from tsfm_training.data.preprocess import Preprocessing, prepare_case

    card = card_from_config(load_config("sam3d_adapter_finetune_smoke")["model"])
    dataset = dataset_from_config({"root": str(shared_data / "sts"), "format": "folders", "name": "sts",
                                   "image": "ct.nii.gz", "label": "mask.nii.gz", "classes": {1: "tumour"}})
    case = prepare_case(dataset.case("STS_005"), Preprocessing.from_card(card))
    tumour = case.label > 0
    case.label = np.where(tumour, 2, 0).astype(np.uint8)
    case.label[:8, :8, :8][~tumour[:8, :8, :8]] = 1
    return case, card


def test_the_authors_augmentation_crops_around_the_target_and_varies(kidney_like_case):
    case, card = kidney_like_case
    sample = click_sample_fn(32, 3, 4, 3, [2], "3dsam_adapter", card.normalization)
    draws = [sample(case, np.random.default_rng(seed)) for seed in range(12)]
    for draw in draws:
        assert draw["image"].shape == (3, 32, 32, 32) and draw["label"].shape == (1, 32, 32, 32)
        assert set(np.unique(draw["label"])) <= {0, 1}
        if draw["label"].any():  # the clicks on the object come first
            assert all(draw["label"][0][tuple(p.astype(int))] == 1 for p in draw["points"][:3])
    with_target = sum(bool(d["label"].any()) for d in draws)
    assert 4 <= with_target <= 12  # tumour crops with probability 2/3 (and background crops may touch it)
    assert not np.allclose(draws[0]["image"], draws[1]["image"])
    plain = click_sample_fn(32, 3, 4, 3, [2], "none", card.normalization)(case, np.random.default_rng(0))
    assert plain["label"].any()  # without augmentation the crop is centred on the target


@pytest.mark.slow
def test_a_run_from_sams_2d_weights_keeps_them_and_trains_the_adapters(tmp_path, monkeypatch, capsys):
    from tsfm_backend.checkpoints import load_model
    from tsfm_backend.models.sam3d import sam_shared_keys
    from tsfm_training.networks import training_network

    monkeypatch.chdir(REPO)
    card = card_from_config(load_config("sam3d_adapter_from_sam_smoke")["model"])
    torch.manual_seed(42)
    sam_source = training_network(card)
    encoder = sam_source.image_encoder.state_dict()
    sam_file = tmp_path / "sam_tiny_2d.pth"
    torch.save({f"image_encoder.{k}": encoder[k] for k in sam_shared_keys(sam_source)}, sam_file)

    assert main(["run", "sam3d_adapter_from_sam_smoke", "--set", f"output_dir={tmp_path / 'out'}",
                 "--set", f"init.sam_checkpoint={sam_file}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["init"]["sam_checkpoint"] == str(sam_file) and result["init"]["sam_tensors"] > 0
    trained = load_model(result["model"]).network.image_encoder.state_dict()
    for key in sam_shared_keys(sam_source):
        if not key.startswith("blocks.") or ".attn." in key or ".mlp." in key:  # frozen: SAM's values exactly
            assert torch.equal(trained[key], encoder[key]), key
    assert (tmp_path / "out" / "train" / "config.yaml").is_file()
    assert load_model(result["model"]).card.provenance["target_labels"] == [1]
