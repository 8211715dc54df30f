"""The preprocessed store (memory-mapped, fingerprinted, written once by rank 0), class-first foreground
sampling, the DataLoader path with workers, overlapping per-class masks, and pools that keep same-named
classes of different datasets apart. Real CTs from ../shared/data."""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tsfm_training.data.datasets import Case, Dataset, DatasetError, read_case_folders, read_mask_folders
from tsfm_training.data.foreground import label_map_locations, patch_centre, read_window
from tsfm_training.data.loader import CaseRef, PatchLoader, PatchSettings, SegmentationSample, StepBatches
from tsfm_training.data.pool import DatasetPool, pool_from_config
from tsfm_training.data.preprocess import Preprocessing, prepare_case
from tsfm_training.data.store import StoredCase, ensure_store

STS = Preprocessing((3.0, 2.0, 2.0), "kji", {"scheme": "hu_window", "lower": -250.0, "upper": 350.0})
TOTALSEG = Preprocessing((3.0, 3.0, 3.0), "kji", {"scheme": "zscore"})


def sts_copy(shared_data: Path, root: Path, cases: tuple[str, ...] = ("STS_001", "STS_002")):
    """Case folders copied into ``root`` (so a test may touch their files), as a dataset."""
    for case in cases:
        shutil.copytree(shared_data / "sts" / case, root / case,
                        ignore=lambda _d, names: [n for n in names if n not in ("ct.nii.gz", "mask.nii.gz")])
    return read_case_folders(root, "ct.nii.gz", "mask.nii.gz", {1: "tumour"}, "sts")


def totalseg_case(shared_data: Path) -> Case:
    folder = shared_data / "totalseg"
    return Case("example_ct_sm", (folder / "example_ct_sm.nii.gz",), folder / "example_seg.nii.gz", "totalseg")


def test_store_holds_the_backend_grid_memory_mapped_and_is_reused_until_sources_or_settings_change(
        tmp_path, shared_data, monkeypatch):
    dataset = sts_copy(shared_data, tmp_path / "sts")
    store = tmp_path / "store"
    paths = ensure_store(dataset.cases, STS, store)
    stored = StoredCase(paths[0])
    expected = prepare_case(dataset.cases[0], STS)
    assert isinstance(stored.image, np.memmap) and isinstance(stored.label, np.memmap)
    np.testing.assert_array_equal(stored.image, expected.image)
    np.testing.assert_array_equal(stored.label, expected.label)
    assert stored.class_voxels == {1: int(expected.label.sum())}
    assert stored.spacing == pytest.approx(expected.spacing)
    assert not list(store.rglob("*.tmp*")), "no temporary folder is left behind"

    import tsfm_training.data.store as store_module

    def must_not_run(*args):
        raise AssertionError("a stored case was preprocessed again")

    monkeypatch.setattr(store_module, "prepare_case", must_not_run)
    assert ensure_store(dataset.cases, STS, store) == paths
    monkeypatch.undo()

    changed = Preprocessing((3.0, 3.0, 3.0), STS.axis_order, STS.normalization)
    assert set(ensure_store(dataset.cases, changed, store)).isdisjoint(paths)
    touched = dataset.cases[1].images[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    again = ensure_store(dataset.cases, STS, store)
    assert again[0] == paths[0] and again[1] != paths[1]


def test_other_ranks_wait_for_rank_zero_and_equal_case_ids_of_two_datasets_stay_apart(tmp_path, shared_data):
    first = sts_copy(shared_data, tmp_path / "a", ("STS_001",))
    second = sts_copy(shared_data, tmp_path / "b", ("STS_001",))
    cases = [first.cases[0], Case("STS_001", second.cases[0].images, second.cases[0].label, "other")]
    store = tmp_path / "store"
    waited: dict[str, list[Path]] = {}
    follower = threading.Thread(target=lambda: waited.setdefault("paths", ensure_store(cases, STS, store, rank=1,
                                                                                       poll_seconds=0.02)))
    follower.start()
    follower.join(0.5)
    assert follower.is_alive() and not list(store.rglob("image.npy")), "rank 1 must neither write nor go on"
    written = ensure_store(cases, STS, store, rank=0)
    follower.join(30)
    assert not follower.is_alive() and waited["paths"] == written
    assert len(set(written)) == 2 and {p.parent.name for p in written} == {"sts", "other"}


def test_class_first_sampling_reaches_every_class_while_voxel_sampling_favours_large_organs(shared_data, tmp_path):
    [path] = ensure_store([totalseg_case(shared_data)], TOTALSEG, tmp_path / "store")
    case = StoredCase(path)
    label = np.asarray(case.label)
    classes = sorted(case.locations)
    assert len(classes) > 30
    rng = np.random.default_rng(0)
    first = Counter(int(label[patch_centre(case.locations, classes, case.shape, rng, True)]) for _ in range(1000))
    by_voxels = Counter(int(label[patch_centre(case.locations, classes, case.shape, rng, True, case.class_voxels)])
                        for _ in range(1000))
    largest = max(case.class_voxels, key=case.class_voxels.get)
    smallest = min(case.class_voxels, key=case.class_voxels.get)
    assert set(first) == set(classes) and max(first.values()) < 3 * 1000 / len(classes)
    assert by_voxels[largest] > 5 * first[largest] and first[smallest] > 10 * by_voxels[smallest]
    assert 0 not in first, "a foreground patch is centred on a voxel of its class"


def test_locations_follow_nnunet_subsampling():
    label = np.zeros((40, 60, 60), np.uint8)
    label[:, :, :30] = 1  # 72,000 voxels: 10,000 kept (more than 1 %)
    label[0, 0, 40] = 2  # a single voxel: kept
    label[10:40, :, 30:] = 3  # 54,000 voxels
    locations = label_map_locations(label, np.random.default_rng(0))
    assert {k: len(v) for k, v in locations.items()} == {1: 10000, 2: 1, 3: 10000}
    assert all((label.reshape(-1)[v] == k).all() for k, v in locations.items())
    big = np.ones((110, 100, 100), np.uint8)  # 1.1 M voxels: 1 % is 11,000 > 10,000
    assert len(label_map_locations(big, np.random.default_rng(0), max_samples=10_000)[1]) == 11_000


def test_read_window_reads_the_block_and_pads_outside():
    array = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    block = read_window(array, (0, 2, 5), (3, 3, 4), fill=-1)
    assert block.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(block[:, 1:, :, :3], array[:, 0:2, 1:4, 3:6])
    assert (block[:, 0] == -1).all() and (block[:, :, :, 3] == -1).all()


def test_batches_are_the_same_whatever_the_workers_and_resume_exactly(tmp_path, shared_data):
    dataset = sts_copy(shared_data, tmp_path / "sts")
    paths = ensure_store(dataset.cases, STS, tmp_path / "store")
    refs = [CaseRef(p, np.array([0, 1], np.uint16)) for p in paths]
    sample = SegmentationSample(PatchSettings((16, 32, 32), 0.5, 1, False, {"rotation_prob": 0.5, "scale_prob": 0.5}))
    assert sample.block[1] > 32, "spatial augmentation crops a larger block first"
    inline = iter(PatchLoader(StepBatches(refs, sample, 2, seed=3)))
    expected = [next(inline) for _ in range(4)]
    assert expected[0]["image"].shape == (2, 1, 16, 32, 32) and expected[0]["label"].dtype == torch.int64
    assert not torch.equal(expected[0]["image"], expected[1]["image"])

    workers = PatchLoader(StepBatches(refs, sample, 2, seed=3), workers=2, prefetch=2)
    parallel = iter(workers)
    for batch in expected[:2]:
        got = next(parallel)
        assert torch.equal(got["image"], batch["image"]) and torch.equal(got["label"], batch["label"])
    assert workers.state_dict() == {"step": 2, "seed": 3}, "the step counts batches handed out, not prefetched"
    del parallel

    resumed = PatchLoader(StepBatches(refs, sample, 2, seed=3), workers=1)
    resumed.load_state_dict({"step": 2, "seed": 3})
    assert torch.equal(next(iter(resumed))["image"], expected[2]["image"])
    other_rank = StepBatches(refs, sample, 2, seed=3, stream=1)
    assert not torch.equal(other_rank[0]["image"], expected[0]["image"])


def write_mask_dataset(root: Path, shared_data: Path) -> Dataset:
    """TotalSegmentator's example CT as a mask-folder case: liver, and 'upper abdomen' = liver + spleen +
    both kidneys, which overlaps the liver mask."""
    ct = sitk.ReadImage(str(shared_data / "totalseg" / "example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(shared_data / "totalseg" / "example_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(seg)
    folder = root / "case_a"
    (folder / "segmentations").mkdir(parents=True)
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    for name, values in (("liver", [5]), ("upper_abdomen", [1, 2, 3, 5])):
        mask = sitk.GetImageFromArray(np.isin(labels, values).astype(np.uint8))
        mask.CopyInformation(seg)
        sitk.WriteImage(mask, str(folder / "segmentations" / f"{name}.nii.gz"))
    return read_mask_folders(root, "ct.nii.gz", "segmentations", {1: "liver", 2: "upper_abdomen"}, "masks")


def test_overlapping_masks_reach_the_batch_as_separate_channels(tmp_path, shared_data):
    dataset = write_mask_dataset(tmp_path / "atlas", shared_data)
    pool = DatasetPool([dataset], {1: "liver", 2: "upper abdomen"})
    [path] = ensure_store([dataset.cases[0]], TOTALSEG, tmp_path / "store")
    stored = StoredCase(path)
    assert stored.label_kind == "masks" and stored.masks.shape[0] == 2
    assert stored.class_voxels[1] < stored.class_voxels[2]
    ref = CaseRef(path, pool.mask_lookup(0), pool.annotated_vector(0))
    settings = PatchSettings((16, 32, 32), 1.0, 2, True, False)
    batch = StepBatches([ref], SegmentationSample(settings), 4, seed=0)[0]
    assert batch["label"].shape == (4, 2, 16, 32, 32) and batch["label"].dtype == torch.uint8
    both = (batch["label"][:, 0] == 1) & (batch["label"][:, 1] == 1)
    assert both.any(), "liver voxels are in both channels"
    assert ((batch["label"][:, 0] == 1) <= (batch["label"][:, 1] == 1)).all()
    assert batch["annotated"].all()
    with pytest.raises(DatasetError, match="sigmoid"):
        StepBatches([ref], SegmentationSample(PatchSettings((16, 32, 32), 1.0, 2, False, False)), 1)[0]


def test_pool_keeps_same_named_classes_of_two_datasets_apart(tmp_path):
    def dataset(name: str) -> Dataset:
        case = Case(f"{name}_1", (tmp_path / "x.nii.gz",), tmp_path / "y.nii.gz", name)
        return Dataset(name, tmp_path, {1: "organ", 2: "tumour"}, ("CT",), (case,))

    kidney, liver = dataset("kidney"), dataset("liver")
    with pytest.raises(DatasetError, match="no pool.remap entry"):
        DatasetPool([kidney, liver], {1: "organ", 2: "tumour"})
    pool = DatasetPool([kidney, liver], {1: "kidney", 2: "kidney tumour", 3: "liver", 4: "liver tumour"},
                       {"kidney": {"organ": 1, "tumour": 2}, "liver": {1: 3, "tumour": 4}})
    labels = np.array([0, 1, 2])
    assert pool.remap_labels(0, labels).tolist() == [0, 1, 2]
    assert pool.remap_labels(1, labels).tolist() == [0, 3, 4]
    assert pool.annotated_vector(0).tolist() == [True, True, False, False]
    default = pool_from_config([kidney, liver], {})
    assert default.classes == {1: "kidney: organ", 2: "kidney: tumour", 3: "liver: organ", 4: "liver: tumour"}
    with pytest.raises(DatasetError, match="no label named 'cyst'"):
        DatasetPool([kidney], {1: "x"}, {"kidney": {"cyst": 1}})
