"""nnU-Net v2 export on real MRML: only reviewed segments, consistent labels across cases, no silent
overwrite, nnU-Net's own check, and the default dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support import mini_slicer
from support.mini_slicer import add_parent_transform, make_oblique, rotation

pytestmark = pytest.mark.slicer


def segmented_case(volume_node, names: dict[int, str]):  # noqa: ANN001, ANN201
    """A segmentation of real CT structures: 1 air, 2 fat, 3 dense tissue, named by ``names``."""
    import slicer
    from TSFMSegmentationLib.segments import labels_to_segmentation

    ct = slicer.util.arrayFromVolume(volume_node)
    labels = np.zeros(ct.shape, np.uint8)
    labels[ct < -500] = 1
    labels[(ct > -150) & (ct < -50)] = 2
    labels[ct > 200] = 3
    node, created = labels_to_segmentation(labels, names, volume_node)
    return node, created, labels


def accept_all(segmentation_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib import provenance
    from TSFMSegmentationLib.segments import segment_ids

    for segment_id in segment_ids(segmentation_node):
        provenance.set_review(segmentation_node, segment_id, provenance.ACCEPTED, reviewer="test")


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_cases_form_a_valid_nnunet_dataset(mini, small_ct_path: Path, shared_data: Path,  # noqa: ANN001
                                              tmp_path: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from TSFMSegmentationLib import provenance
    from TSFMSegmentationLib.export import CaseExistsError, dataset_folder, export_case
    from TSFMSegmentationLib.volumes import image_payload

    folder = dataset_folder(tmp_path, 501, "Reviewed")
    first = mini_slicer.load_volume(small_ct_path, "first")
    make_oblique(first)
    add_parent_transform(first, rotation("z", 20.0))
    seg1, created1, labels1 = segmented_case(first, {1: "air", 2: "fat", 3: "bone"})
    accept_all(seg1)
    provenance.set_review(seg1, created1[2], provenance.REJECTED)
    exported = export_case(folder, "case_001", first, seg1)
    assert exported.labels == {"background": 0, "air": 1, "bone": 2}

    second = mini_slicer.load_volume(shared_data / "sts" / "STS_001" / "ct.nii.gz", "second")
    seg2, created2, labels2 = segmented_case(second, {1: "Bone", 2: "tumour", 3: "Air"})
    accept_all(seg2)
    export_case(folder, "case_002", second, seg2)

    description = json.loads((folder / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "air": 1, "bone": 2, "neoplasm": 3}
    assert description["numTraining"] == 2
    assert description["channel_names"] == {"0": "CT"}

    label1 = sitk.ReadImage(str(folder / "labelsTr" / "case_001.nii.gz"))
    assert label1.GetPixelID() == sitk.sitkUInt8
    array1 = sitk.GetArrayFromImage(label1)
    np.testing.assert_array_equal(array1 == 1, labels1 == 1)
    np.testing.assert_array_equal(array1 == 2, labels1 == 3)
    assert not (array1 == 3).any()  # the rejected fat segment is not exported
    payload = image_payload(first)
    for written in (label1, sitk.ReadImage(str(folder / "imagesTr" / "case_001_0000.nii.gz"))):
        np.testing.assert_allclose(written.GetOrigin(), payload.origin, atol=1e-3)
        np.testing.assert_allclose(written.GetDirection(), payload.direction, atol=1e-5)
    array2 = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "case_002.nii.gz")))
    np.testing.assert_array_equal(array2 == 1, labels2 == 3)  # "Air" keeps index 1
    np.testing.assert_array_equal(array2 == 2, labels2 == 1)  # "Bone" keeps index 2
    np.testing.assert_array_equal(array2 == 3, labels2 == 2)  # "tumour" is new: 3

    record = json.loads((folder / "provenance" / "case_002.json").read_text())
    assert {s["name"] for s in record["segments"]} == {"Bone", "Neoplasm", "Air"}
    assert all(s["edited"] for s in record["segments"])  # no model wrote them: manual segments

    verify_dataset_integrity(str(folder), num_processes=1)

    with pytest.raises(CaseExistsError, match="case_002.*overwrite=True"):
        export_case(folder, "case_002", second, seg2)
    export_case(folder, "case_002", second, seg2, overwrite=True)
    assert sorted(p.name for p in folder.rglob("*") if p.name.startswith(".")) == []  # no temp files left


def test_bad_case_id_and_foreign_dataset_are_refused(ct_node, tmp_path: Path) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.export import DatasetError, export_case

    segmentation, _, _ = segmented_case(ct_node, {1: "air"})
    accept_all(segmentation)
    with pytest.raises(ValueError, match="case id '../x'"):
        export_case(tmp_path, "../x", ct_node, segmentation)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0},
                                                       "file_ending": ".nii.gz", "numTraining": 0}))
    with pytest.raises(DatasetError, match="channels"):
        export_case(tmp_path, "case", ct_node, segmentation)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        export_case(tmp_path, "case", ct_node, segmentation)


def test_only_accepted_segments_are_exported_unless_unreviewed_ones_are_asked_for(ct_node, tmp_path: Path) -> None:  # noqa: ANN001
    from TSFMSegmentationLib import provenance
    from TSFMSegmentationLib.export import dataset_folder, export_case

    folder = dataset_folder(tmp_path, 502, "Review")
    segmentation, created, labels = segmented_case(ct_node, {1: "air", 2: "fat", 3: "bone"})
    provenance.set_review(segmentation, created[3], provenance.ACCEPTED, reviewer="rad1")
    provenance.set_review(segmentation, created[2], provenance.REJECTED, reviewer="rad1")  # air stays pending

    case = export_case(folder, "accepted_only", ct_node, segmentation)
    assert case.labels == {"background": 0, "bone": 1}
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
    np.testing.assert_array_equal(written, (labels == 3).astype(np.uint8))  # pending air is background
    record = json.loads(case.provenance.read_text())
    assert [s["name"] for s in record["segments"]] == ["bone"]
    assert record["segments"][0]["status"] == "accepted" and record["segments"][0]["reviewer"] == "rad1"
    assert {(s["name"], s["status"]) for s in record["left_out"]} == {("air", "pending"), ("fat", "rejected")}

    with_pending = export_case(folder, "with_pending", ct_node, segmentation, include_unreviewed=True)
    assert with_pending.labels == {"background": 0, "bone": 1, "air": 2}
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(with_pending.label)))
    np.testing.assert_array_equal(written == 2, labels == 1)
    assert not (written[labels == 2] > 0).any()  # rejected fat is never exported
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2


def test_export_without_an_accepted_segment_writes_nothing(ct_node, tmp_path: Path) -> None:  # noqa: ANN001
    from TSFMSegmentationLib import provenance
    from TSFMSegmentationLib.export import NothingToExportError, dataset_folder, export_case

    folder = dataset_folder(tmp_path, 503, "Review")
    segmentation, created, _ = segmented_case(ct_node, {1: "air", 2: "fat", 3: "bone"})
    with pytest.raises(NothingToExportError, match=r"no segment is accepted \(3 pending\).*include unreviewed"
                                                   r".*nothing was written"):
        export_case(folder, "case_1", ct_node, segmentation)
    assert not folder.exists()

    provenance.set_review(segmentation, created[1], provenance.ACCEPTED)
    export_case(folder, "case_1", ct_node, segmentation)
    before = folder_snapshot(folder)
    for segment_id in created.values():
        provenance.set_review(segmentation, segment_id, provenance.REJECTED)
    with pytest.raises(NothingToExportError, match=r"accepted or pending \(3 rejected\)"):
        export_case(folder, "case_2", ct_node, segmentation, include_unreviewed=True)
    with pytest.raises(NothingToExportError):
        export_case(folder, "case_1", ct_node, segmentation, overwrite=True)
    assert folder_snapshot(folder) == before


def test_default_dataset_folder_follows_nnunet_naming(tmp_path: Path) -> None:
    from TSFMSegmentationLib.export import default_dataset_folder

    documents = tmp_path / "Documents"
    root = documents / "TSFMSegmentation"
    assert default_dataset_folder(documents) == root / "Dataset501_Reviewed"
    assert not root.exists()  # choosing a folder creates nothing
    (root / "Dataset501_Liver").mkdir(parents=True)
    (root / "Dataset502_Kidney").mkdir()
    (root / "Dataset503_notes.txt").write_text("a file, not a dataset")
    assert default_dataset_folder(documents) == root / "Dataset503_Reviewed"
    assert default_dataset_folder(documents, "Kidney") == root / "Dataset502_Kidney"  # cases accumulate there
    raw = tmp_path / "nnUNet_raw"
    (raw / "Dataset501_Reviewed").mkdir(parents=True)
    assert default_dataset_folder(documents, nnunet_raw=raw) == raw / "Dataset501_Reviewed"
    assert default_dataset_folder(documents, "Other", nnunet_raw=str(raw)) == raw / "Dataset502_Other"
    with pytest.raises(ValueError, match="dataset name"):
        default_dataset_folder(documents, "../escape")
    for used in range(501, 1000):
        (raw / f"Dataset{used:03d}_X{used}").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="no free dataset id"):
        default_dataset_folder(documents, "Full", nnunet_raw=raw)


def test_provenance_tracks_model_prompts_review_and_edits(ct_node) -> None:  # noqa: ANN001
    from TSFMSegmentationLib import provenance
    from TSFMSegmentationLib.segments import add_empty_segment, apply_crop, labels_to_segmentation

    node, _ = labels_to_segmentation(np.zeros((30, 101, 122), np.uint8), {}, ct_node)
    tumour = add_empty_segment(node, "tumour")
    apply_crop(node, tumour, ct_node, (5, 20, 20), np.ones((4, 4, 4), np.uint8))
    click = {"kind": "point", "point": [6, 21, 21], "positive": True, "object_id": 1}
    provenance.record_model_output(node, tumour, ct_node, "click-default", "interactive", [click])
    provenance.record_model_output(node, tumour, ct_node, "click-default", "interactive", [click])
    described = provenance.describe(node, tumour, ct_node)
    assert described["model"] == "click-default" and len(described["prompts"]) == 2
    assert described["status"] == "pending" and described["edited"] is False

    apply_crop(node, tumour, ct_node, (5, 20, 20), np.zeros((1, 1, 1), np.uint8))  # a manual touch-up
    assert provenance.describe(node, tumour, ct_node)["edited"] is True
    provenance.set_review(node, tumour, "accepted", reviewer="rad1")
    assert provenance.describe(node, tumour, ct_node)["status"] == "accepted"
    with pytest.raises(ValueError, match="review status"):
        provenance.set_review(node, tumour, "maybe")


def test_more_than_255_labels_are_written_as_uint16(ct_node, tmp_path: Path) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.export import export_case

    existing = {"background": 0, **{f"structure_{n}": n for n in range(1, 300)}}
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": existing,
                                                       "file_ending": ".nii.gz", "numTraining": 0}))
    segmentation, _, labels = segmented_case(ct_node, {1: "air", 2: "structure_7"})
    accept_all(segmentation)
    case = export_case(tmp_path, "big", ct_node, segmentation)
    assert case.labels["air"] == 300 and case.labels["structure_7"] == 7
    written = sitk.ReadImage(str(case.label))
    assert written.GetPixelID() == sitk.sitkUInt16
    array = sitk.GetArrayFromImage(written)
    np.testing.assert_array_equal(array == 300, labels == 1)
    np.testing.assert_array_equal(array == 7, labels == 2)


def test_checksum_depends_on_the_voxels_not_on_the_region_read(mini) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.provenance import mask_checksum

    whole = np.zeros((20, 30, 40), np.uint8)
    whole[5:9, 10:12, 20:31] = 1
    part = whole[3:15, 8:25, 18:40]
    assert mask_checksum(whole) == mask_checksum(part, (3, 8, 18))
    moved = np.roll(whole, 1, axis=2)
    assert mask_checksum(moved) != mask_checksum(whole)
    assert mask_checksum(np.zeros((4, 4, 4))) == mask_checksum(np.zeros((1, 1, 1)))


def test_label_checksums_match_one_mask_at_a_time(mini) -> None:  # noqa: ANN001
    from TSFMSegmentationLib.provenance import label_checksums, mask_checksum

    rng = np.random.default_rng(3)
    labels = np.zeros((12, 20, 25), np.uint16)
    labels[2:7, 3:9, 4:20] = 3
    labels[5:12, 10:20, 0:5] = 300
    labels[rng.random(labels.shape) > 0.97] = 7
    checksums = label_checksums(labels)
    assert sorted(checksums) == [3, 7, 300]
    for value, checksum in checksums.items():
        assert checksum == mask_checksum(labels == value)
