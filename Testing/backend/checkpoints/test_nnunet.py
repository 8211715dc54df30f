"""nnU-Net v1 (.model + the real released .model.pkl) and v2 (checkpoint_final.pth + plans/dataset.json)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from support.official_checkpoints import stunet_for, write_v1_checkpoint, write_v2_results
from tsfm_backend.checkpoints import CheckpointError, load_model, read_checkpoint
from tsfm_backend.formats.safe_unpickler import load_plans_pickle

TOTALSEG_POOLS = [[2, 2, 2]] * 4 + [[1, 1, 2]]


@pytest.mark.parametrize("name", ["small", "base", "large", "huge"])
def test_every_released_plan_file_reads_without_unpickling_code(shared_data, name):
    info = load_plans_pickle(shared_data / "stunet" / f"{name}_ep4k.model.pkl")
    assert info["name"] == {"small": "STUNetTrainer_small", "base": "STUNetTrainer_base",
                            "large": "STUNetTrainer_large", "huge": "STUNetTrainer_huge"}[name]
    stage = info["plans"]["plans_per_stage"][0]
    assert info["plans"]["num_classes"] == 104
    assert [list(p) for p in stage["pool_op_kernel_sizes"]] == TOTALSEG_POOLS
    assert list(stage["patch_size"]) == [128, 128, 128]
    assert dict(info["plans"]["normalization_schemes"]) == {0: "nonCT"}


def test_experiment_plans_read_too(shared_data):
    plans = load_plans_pickle(shared_data / "stunet" / "plans.pkl")
    assert plans["num_classes"] == 104 and plans["num_modalities"] == 1


def _beside_real_plans(tmp_path, shared_data, name):
    (tmp_path / f"{name}_ep4k.model.pkl").symlink_to(shared_data / "stunet" / f"{name}_ep4k.model.pkl")
    (tmp_path / "label_orders.json").symlink_to(shared_data / "stunet" / "label_orders.json")
    return tmp_path / f"{name}_ep4k.model"


def test_v1_stunet_small_with_the_real_model_pkl_imports_and_predicts(tmp_path, shared_data):
    network = stunet_for("S", 105, TOTALSEG_POOLS)
    path = write_v1_checkpoint(_beside_real_plans(tmp_path, shared_data, "small"), network)

    state_dict, card, fmt = read_checkpoint(path)
    assert fmt == "nnunet_v1"
    assert card.id == "small_ep4k"
    assert card.architecture == {"input_channels": 1, "num_classes": 105, "preset": "S",
                                 "pool_op_kernel_sizes": TOTALSEG_POOLS}
    assert card.num_classes == 105
    labels = json.loads((shared_data / "stunet" / "label_orders.json").read_text())
    assert card.classes[1] == labels["1"] == "adrenal_gland_left"
    assert card.classes[104] == labels["104"]
    assert card.spacing == (1.5, 1.5, 1.5)
    assert card.patch_size == (128, 128, 128)
    assert card.normalization == {"scheme": "zscore"}
    assert card.axis_order == "kji" and card.output == "softmax"
    assert card.provenance["trainer"] == "STUNetTrainer_small" and card.provenance["epoch"] == 4000

    loaded = load_model(path)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key
    x = torch.randn(1, 1, 32, 32, 64)  # 2^4 on z and y, 2^5 on x: the last pool op halves x only
    with torch.no_grad():
        probabilities = loaded.network(x).softmax(1)
    assert probabilities.shape == (1, 105, 32, 32, 64)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(1, 32, 32, 64))


def test_v1_weights_smaller_than_the_trainer_name_are_read_from_their_shapes(tmp_path, shared_data, caplog):
    network = stunet_for("tiny", 105, TOTALSEG_POOLS)
    path = write_v1_checkpoint(_beside_real_plans(tmp_path, shared_data, "base"), network)
    with caplog.at_level(logging.WARNING):
        loaded = load_model(path)
    assert "implies STU-Net B" in caplog.text
    assert loaded.card.architecture["preset"] == "tiny"
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), network(x))


def test_v1_class_count_must_match_the_plans(tmp_path, shared_data):
    path = write_v1_checkpoint(_beside_real_plans(tmp_path, shared_data, "base"), stunet_for("tiny", 7, TOTALSEG_POOLS))
    with pytest.raises(CheckpointError, match="7 outputs but the plans 105"):
        load_model(path)


def test_v1_model_without_its_pkl_says_so(tmp_path):
    path = write_v1_checkpoint(tmp_path / "lonely.model", stunet_for("tiny", 3, TOTALSEG_POOLS))
    with pytest.raises(CheckpointError, match=r"without its lonely\.model\.pkl"):
        load_model(path)


def test_v2_results_folder_imports_and_predicts(tmp_path):
    pools = [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    network = stunet_for("tiny", 3, pools, seed=5)
    path = write_v2_results(tmp_path / "STUNetTrainer_small_ft__nnUNetPlans__3d_fullres", network,
                            "STUNetTrainer_small_ft", {"liver": 1, "liver_tumour": 2})
    state_dict, card, fmt = read_checkpoint(path)
    assert fmt == "nnunet_v2"
    assert card.id == "Dataset123_Liver-STUNetTrainer_small_ft-fold0"
    assert card.classes == {1: "liver", 2: "liver_tumour"}
    assert card.spacing == (2.5, 0.8, 0.8) and card.patch_size == (32, 64, 64)
    assert card.architecture["pool_op_kernel_sizes"] == pools
    assert card.normalization == {"scheme": "ct_clip_zscore", "lower": -17.0, "upper": 201.0,
                                  "mean": 99.4, "std": 39.4}
    loaded = load_model(path)
    x = torch.randn(1, 1, 16, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), network(x))


def test_v2_without_plans_uses_the_copies_inside_the_checkpoint(tmp_path):
    pools = [[2, 2, 2]] * 4 + [[1, 1, 1]]
    path = write_v2_results(tmp_path / "run", stunet_for("tiny", 2, pools), "STUNetTrainer", {"tumour": 1})
    (tmp_path / "run" / "plans.json").unlink()
    (tmp_path / "run" / "dataset.json").unlink()
    _, card, _ = read_checkpoint(path, model_id="mine")
    assert card.id == "mine" and card.classes == {1: "tumour"}


def test_v2_region_labels_are_refused_by_name(tmp_path):
    pools = [[2, 2, 2]] * 4 + [[1, 1, 1]]
    path = write_v2_results(tmp_path / "run", stunet_for("tiny", 2, pools), "STUNetTrainer", {"tumour": 1})
    dataset = json.loads((tmp_path / "run" / "dataset.json").read_text())
    dataset["labels"]["whole"] = [1, 2]
    (tmp_path / "run" / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(CheckpointError, match="region-based label 'whole'"):
        read_checkpoint(path)


def test_a_results_folder_with_one_fold_resolves_to_its_checkpoint(tmp_path):
    pools = [[2, 2, 2]] * 4 + [[1, 1, 1]]
    folder = tmp_path / "STUNetTrainer__nnUNetPlans__3d_fullres"
    write_v2_results(folder, stunet_for("tiny", 2, pools), "STUNetTrainer", {"tumour": 1})
    _, card, fmt = read_checkpoint(folder)
    assert fmt == "nnunet_v2" and card.provenance["source"].endswith("fold_0/checkpoint_final.pth")
    (folder / "fold_1").mkdir()
    (folder / "fold_1" / "checkpoint_final.pth").write_bytes((folder / "fold_0" / "checkpoint_final.pth").read_bytes())
    with pytest.raises(CheckpointError, match=r"several checkpoints \(fold_0/checkpoint_final.pth, fold_1/"):
        read_checkpoint(folder)


def test_ct_normalisation_reads_each_versions_intensity_properties(tmp_path):
    from tsfm_backend.formats import nnunet_v1, nnunet_v2

    stats = {"percentile_00_5": -980.0, "percentile_99_5": 1400.0, "mean": 90.5}
    v1_plans = {"normalization_schemes": {0: "CT"},
                "dataset_properties": {"intensityproperties": {0: {**stats, "sd": 310.0}}}}
    v2_plans = {"foreground_intensity_properties_per_channel": {"0": {**stats, "std": 310.0}}}
    expected = {"scheme": "ct_clip_zscore", "lower": -980.0, "upper": 1400.0, "mean": 90.5, "std": 310.0}
    assert nnunet_v1.normalization_from_plans(v1_plans, tmp_path) == expected
    v2_config = {"normalization_schemes": ["CTNormalization"]}
    assert nnunet_v2.normalization_from_plans(v2_plans, v2_config, tmp_path) == expected
    del v2_plans["foreground_intensity_properties_per_channel"]["0"]["std"]
    with pytest.raises(CheckpointError, match="CTNormalization normalisation without intensity property 'std'"):
        nnunet_v2.normalization_from_plans(v2_plans, v2_config, tmp_path)
