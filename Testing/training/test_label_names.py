"""A training set whose label names differ from the model card's is refused, listing both name sets,
unless the config maps the names (``data.label_map``); matching names are mapped by name, not by value."""

from __future__ import annotations

import json
import shutil

import pytest
from tsfm_training.data.datasets import dataset_from_config
from tsfm_training.finetune import FinetuneError, label_remap
from tsfm_training.networks import card_from_config
from tsfm_training.recipes.supervised import checked_remap


def slicer_export(root, shared_data, labels: dict[str, int]):
    """An nnU-Net v2 raw dataset as the Slicer module exports it, with one real sarcoma CT and its mask."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    case = shared_data / "sts" / "STS_005"
    shutil.copy(case / "ct.nii.gz", root / "imagesTr" / "STS_005_0000.nii.gz")
    shutil.copy(case / "mask.nii.gz", root / "labelsTr" / "STS_005.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, **labels}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    return dataset_from_config({"root": str(root), "format": "nnunet"})


def liver_card():
    return card_from_config({"family": "stunet", "architecture": {"preset": "tiny", "num_classes": 2},
                             "classes": {1: "liver"}, "spacing": [3, 3, 3], "normalization": {"scheme": "zscore"},
                             "patch_size": [16, 32, 32]})


def test_a_neoplasm_export_into_a_liver_model_is_refused_with_both_name_sets(tmp_path, shared_data):
    dataset = slicer_export(tmp_path / "Dataset001_Export", shared_data, {"neoplasm": 1})
    with pytest.raises(FinetuneError, match=r"\['neoplasm'\] match no class.*Dataset labels: \['neoplasm'\]; "
                                            r"model classes: \['liver'\].*data.label_map"):
        checked_remap([dataset], liver_card(), {})
    remap = checked_remap([dataset], liver_card(), {"label_map": {"neoplasm": "liver"}})
    assert remap == {dataset.name: {1: 1}}


def test_names_match_by_name_whatever_their_values():
    assert label_remap("d", {1: "Kidney Tumor", 2: "kidney"}, {1: "kidney", 2: "kidney_tumor"}) == {1: 2, 2: 1}
    assert label_remap("d", {1: "cyst", 2: "tumour"}, {1: "tumour"}, {"cyst": "background"}) == {1: 0, 2: 1}
    with pytest.raises(FinetuneError, match=r"label_map names \['lesion'\], which dataset 'd' does not have"):
        label_remap("d", {1: "tumour"}, {1: "tumour"}, {"lesion": "tumour"})
    with pytest.raises(FinetuneError, match=r"\['neoplasm -> spleen'\] match no class"):
        label_remap("d", {1: "neoplasm"}, {1: "liver"}, {"neoplasm": "spleen"})


def test_an_explicit_pool_remap_is_left_to_the_config(tmp_path, shared_data):
    dataset = slicer_export(tmp_path / "Dataset002_Export", shared_data, {"neoplasm": 1})
    pool = {"classes": {1: "liver"}, "remap": {dataset.name: {1: 1}}}
    assert checked_remap([dataset], liver_card(), {"pool": pool}) == {dataset.name: {1: 1}}
