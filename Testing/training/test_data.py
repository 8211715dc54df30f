"""Datasets (nnU-Net v2, MSD, case folders), the dataset pool, preprocessing + cache, and patch batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tsfm_training.data.datasets import DatasetError, read_case_folders, read_dataset, split_cases
from tsfm_training.data.pool import DatasetPool
from tsfm_training.data.preprocess import CaseCache, Preprocessing, prepare_case
from tsfm_training.data.sampler import PatchBatches, patch_sample_fn
from tsfm_training.data.transforms import training_transforms


def small_sts_case(shared_data: Path, case_id: str = "STS_001") -> tuple[sitk.Image, sitk.Image]:
    """A 24 x 48 x 48 crop of a real CT and its tumour mask, around the tumour centre."""
    ct = sitk.ReadImage(str(shared_data / "sts" / case_id / "ct.nii.gz"))
    mask = sitk.ReadImage(str(shared_data / "sts" / case_id / "mask.nii.gz"))
    k, j, i = (int(c) for c in np.argwhere(sitk.GetArrayViewFromImage(mask)).mean(0))
    size = [48, 48, 24]
    start = [max(0, i - 24), max(0, j - 24), max(0, k - 12)]
    return sitk.RegionOfInterest(ct, size, start), sitk.RegionOfInterest(mask, size, start)


def write_nnunet_dataset(root: Path, shared_data: Path, cases: list[str], labels: dict[str, int],
                         label_value: int = 1) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "provenance").mkdir()
    for case in cases:
        ct, mask = small_sts_case(shared_data, case)
        sitk.WriteImage(ct, str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        sitk.WriteImage(sitk.Cast(mask * label_value, sitk.sitkUInt8), str(root / "labelsTr" / f"{case}.nii.gz"))
        (root / "provenance" / f"{case}.json").write_text(json.dumps({"source": "test", "case": case}))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz",
        "name": root.name}))
    return root


def test_nnunet_v2_dataset_with_provenance_and_split(tmp_path, shared_data):
    root = write_nnunet_dataset(tmp_path / "Dataset001_STS", shared_data, ["STS_001", "STS_002"],
                                {"background": 0, "tumour": 1})
    dataset = read_dataset(root)
    assert dataset.classes == {1: "tumour"} and dataset.channels == ("CT",)
    assert [c.case_id for c in dataset.cases] == ["STS_001", "STS_002"]
    assert dataset.case("STS_002").provenance == {"source": "test", "case": "STS_002"}
    train, val = split_cases(dataset.cases, ["STS_002"])
    assert [c.case_id for c in train] == ["STS_001"] and [c.case_id for c in val] == ["STS_002"]
    with pytest.raises(DatasetError, match=r"validation cases \['STS_999'\]"):
        split_cases(dataset.cases, ["STS_999"])

    (root / "imagesTr" / "STS_002_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match="STS_002.*image files missing"):
        read_dataset(root)


def test_bad_dataset_json_is_named(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    with pytest.raises(DatasetError, match="dataset.json: missing"):
        read_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "kidney": [1, 2]}}))
    with pytest.raises(DatasetError, match="region label 'kidney'"):
        read_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_dataset(root)


def test_msd_dataset_and_case_folders(tmp_path, shared_data):
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    ct, mask = small_sts_case(shared_data)
    sitk.WriteImage(ct, str(root / "imagesTr" / "sts_001.nii.gz"))
    sitk.WriteImage(mask, str(root / "labelsTr" / "sts_001.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "name": "STS", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "tumour"},
        "training": [{"image": "./imagesTr/sts_001.nii.gz", "label": "./labelsTr/sts_001.nii.gz"}]}))
    msd = read_dataset(root)
    assert msd.name == "STS" and msd.classes == {1: "tumour"} and msd.cases[0].case_id == "sts_001"

    folders = read_case_folders(shared_data / "sts", "ct.nii.gz", "mask.nii.gz", {1: "tumour"})
    assert len(folders.cases) == 39 and folders.cases[0].label.name == "mask.nii.gz"


def _dataset(root: Path, name: str, classes: dict[int, str], n: int):
    from tsfm_training.data.datasets import Case, Dataset

    cases = tuple(Case(f"{name}_{i}", (root / f"{i}.nii.gz",), root / f"{i}_seg.nii.gz", name) for i in range(n))
    return Dataset(name, root, classes, ("CT",), cases)


def test_pool_remaps_labels_remembers_annotations_and_weights(tmp_path):
    liver = _dataset(tmp_path, "liver", {1: "liver", 2: "liver tumour"}, 4)
    kidney = _dataset(tmp_path, "kidney", {1: "kidney", 2: "kidney tumour"}, 16)
    pool = DatasetPool([liver, kidney], {1: "liver", 2: "kidney", 3: "tumour"},
                       {"liver": {1: 1, 2: 3}, "kidney": {1: 2, 2: 3}})
    assert len(pool) == 20 and pool.num_classes == 3
    np.testing.assert_array_equal(pool.remap_labels(0, np.array([0, 1, 2])), [0, 1, 3])
    np.testing.assert_array_equal(pool.remap_labels(4, np.array([0, 1, 2])), [0, 2, 3])
    assert pool.annotated_vector(0).tolist() == [True, False, True]
    assert pool.annotated_vector(19).tolist() == [False, True, True]
    weights = pool.sampling_weights()
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] / weights[4] == pytest.approx(np.sqrt(16) / np.sqrt(4))  # 1/sqrt(n) per case
    with pytest.raises(DatasetError, match="label values"):
        pool.remap_labels(0, np.array([5]))
    with pytest.raises(DatasetError, match="target 7 is not a pool class"):
        DatasetPool([liver], {1: "liver"}, {"liver": {1: 7}})
    with pytest.raises(DatasetError, match="numbered 1..C"):
        DatasetPool([liver], {2: "liver"})


def test_prepare_case_matches_backend_grid_and_cache_reuses(tmp_path, shared_data, monkeypatch):
    root = write_nnunet_dataset(tmp_path / "Dataset002", shared_data, ["STS_001"], {"background": 0, "tumour": 1},
                                label_value=1)
    case = read_dataset(root).cases[0]
    settings = Preprocessing(spacing=(6.54, 1.953124, 1.953124), axis_order="kji",
                             normalization={"scheme": "zscore"})
    prepared = prepare_case(case, settings)
    assert prepared.image.shape == (1, 12, 24, 24) and prepared.label.shape == (12, 24, 24)
    assert prepared.image.dtype == np.float32 and prepared.label.dtype == np.uint8
    assert abs(float(prepared.image.mean())) < 0.2 and set(np.unique(prepared.label)) == {0, 1}
    assert prepared.spacing == pytest.approx((6.54, 1.953124, 1.953124), rel=1e-3)

    cache = CaseCache(tmp_path / "cache")
    first = cache.get(case, settings)
    import tsfm_training.data.preprocess as preprocess

    monkeypatch.setattr(preprocess, "prepare_case", lambda *a: pytest.fail("cache miss"))
    again = cache.get(case, settings)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.label, again.label)
    other = Preprocessing(spacing=None, axis_order="kji", normalization={"scheme": "zscore"})
    assert cache.key(case, other) != cache.key(case, settings)


def test_prepare_case_arranges_a_mirrored_label_file_by_position_and_refuses_a_shifted_one(tmp_path, shared_data):
    root = write_nnunet_dataset(tmp_path / "Dataset002", shared_data, ["STS_001"], {"background": 0, "tumour": 1},
                                label_value=1)
    case = read_dataset(root).cases[0]
    settings = Preprocessing(spacing=(6.54, 1.953124, 1.953124), axis_order="kji", normalization={"scheme": "zscore"})
    expected = prepare_case(case, settings).label
    stored = sitk.ReadImage(str(case.label))
    mirrored = sitk.Flip(stored, [False, True, False])  # same voxels, J axis stored the other way
    assert not np.array_equal(sitk.GetArrayFromImage(mirrored), sitk.GetArrayFromImage(stored))
    sitk.WriteImage(mirrored, str(case.label))
    np.testing.assert_array_equal(prepare_case(case, settings).label, expected)
    stored.SetOrigin(tuple(o + 0.5 for o in stored.GetOrigin()))
    sitk.WriteImage(stored, str(case.label))
    with pytest.raises(DatasetError, match="STS_001.*not on its image's voxel grid"):
        prepare_case(case, settings)


def test_prepare_case_resamples_before_the_window_when_the_card_says_so(tmp_path, shared_data):
    from tsfm_backend.image_io import read_volume
    from tsfm_backend.model_card import ModelCard
    from tsfm_backend.preprocessing import prepare

    root = write_nnunet_dataset(tmp_path / "Dataset002", shared_data, ["STS_001"], {"background": 0, "tumour": 1},
                                label_value=1)
    case = read_dataset(root).cases[0]
    volume = read_volume(case.images[0])
    lower, upper = (float(v) for v in np.percentile(volume.array, [30, 70]))  # a window that clips this image
    spacing, window = (6.54, 1.953124, 1.953124), {"scheme": "hu_window", "lower": lower, "upper": upper}
    after = prepare_case(case, Preprocessing(spacing, "kji", {**window, "after_resampling": True}))
    before = prepare_case(case, Preprocessing(spacing, "kji", window))
    card = ModelCard(id="c", family="stunet", architecture={}, spacing=spacing,
                     normalization={**window, "after_resampling": True})
    backend = prepare(volume, card, with_body=False).image.numpy()
    np.testing.assert_allclose(after.image, backend, rtol=0, atol=1e-6)
    assert np.abs(after.image - before.image).max() > 0.01


def test_patch_batches_oversample_foreground_and_replay_by_step(shared_data):
    ct, mask = small_sts_case(shared_data)
    from tsfm_training.data.preprocess import PreparedCase

    image = sitk.GetArrayFromImage(ct).astype(np.float32)[None]
    label = sitk.GetArrayFromImage(mask).astype(np.uint8)
    case = PreparedCase("STS_001", (image - image.mean()) / image.std(), label, (3.27, 0.98, 0.98))
    always_tumour = PatchBatches([case], patch_sample_fn(training_transforms((8, 16, 16), 1.0)),
                                 batch_size=3, seed=5)
    batch = next(always_tumour)
    assert batch["image"].shape == (3, 1, 8, 16, 16) and batch["label"].shape == (3, 1, 8, 16, 16)
    assert batch["image"].dtype == torch.float32 and batch["label"].dtype == torch.int64
    assert all(int(batch["label"][b].sum()) > 0 for b in range(3))

    stream = PatchBatches([case], patch_sample_fn(training_transforms((8, 16, 16), 0.33)), batch_size=2, seed=1)
    first = [next(stream) for _ in range(3)]
    replay = PatchBatches([case], patch_sample_fn(training_transforms((8, 16, 16), 0.33)), batch_size=2, seed=1)
    replay.load_state_dict({"step": 2, "seed": 1})
    assert torch.equal(next(replay)["image"], first[2]["image"])
    assert not torch.equal(first[0]["image"], first[1]["image"])
    with pytest.raises(ValueError, match="seed 9"):
        replay.load_state_dict({"step": 0, "seed": 9})


def test_training_cases_leave_out_the_validation_ids_and_say_when_none_remain(tmp_path, shared_data):
    from tsfm_training.config import ConfigError
    from tsfm_training.data.preprocess import prepare_training_cases

    sts = {"root": str(shared_data / "sts"), "format": "folders", "name": "sts", "image": "ct.nii.gz",
           "label": "mask.nii.gz", "classes": {1: "tumour"}}
    settings = Preprocessing(spacing=(13.08, 7.8, 7.8), axis_order="kji", normalization={"scheme": "zscore"})
    data = {"datasets": [sts], "validation": ["STS_001"], "max_cases": 2}
    prepared = prepare_training_cases(data, settings, tmp_path / "cache")
    assert [p.case_id for p in prepared] == ["STS_002", "STS_004"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    everything = [p.name for p in (shared_data / "sts").iterdir() if p.is_dir()]
    with pytest.raises(ConfigError, match="no training case once 'data.validation' is left out"):
        prepare_training_cases({"datasets": [sts], "validation": everything}, settings, tmp_path / "cache")
