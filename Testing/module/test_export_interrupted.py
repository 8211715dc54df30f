"""An export killed at any file operation leaves whole cases only, and the next export works.

The kill is simulated in-process: every file operation of the export (rename, delete, mkdir, and
each NIfTI that Slicer writes) is counted, and the n-th one raises ``Killed``, as does every later
one, so that no clean-up after the kill happens either (a killed process runs no ``finally``). A
NIfTI write that is killed leaves a half-written file behind, as a real kill would. For every n
from 1 to the number of operations of a whole export, the dataset is checked after the kill (no
image without its label, no temporary file in imagesTr/labelsTr), after the repair that every
export runs first (whole cases only, numTraining right), and after re-exporting the same case.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support.kill_switch import Killed, KillSwitch

pytestmark = pytest.mark.slicer

IMAGE_NAME = re.compile(r"^(?P<case>[A-Za-z0-9][A-Za-z0-9_\-]*)_(?P<channel>\d{4})\.nii\.gz$")
LABEL_NAME = re.compile(r"^(?P<case>[A-Za-z0-9][A-Za-z0-9_\-]*)\.nii\.gz$")


def armed(switch: KillSwitch):  # noqa: ANN201 - context manager
    from TSFMSegmentationLib import export

    return switch.armed(export, "_write_volume", 2, b"\x1f\x8b\x08 half-written")


def segmented(volume_node, names: dict[int, str]):  # noqa: ANN001, ANN201
    """A segmentation of CT structures (1 air, 2 fat, 3 dense tissue), every segment accepted."""
    import slicer
    from TSFMSegmentationLib import provenance
    from TSFMSegmentationLib.segments import labels_to_segmentation, segment_ids

    ct = slicer.util.arrayFromVolume(volume_node)
    labels = np.zeros(ct.shape, np.uint8)
    labels[ct < -500] = 1
    labels[(ct > -150) & (ct < -50)] = 2
    labels[ct > 200] = 3
    node, _ = labels_to_segmentation(labels, names, volume_node)
    for segment_id in segment_ids(node):
        provenance.set_review(node, segment_id, provenance.ACCEPTED, reviewer="test")
    return node


def read_labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def check_dataset(folder: Path) -> set[str]:
    """What nnU-Net's verify_dataset_integrity checks, without its process pool; returns the cases.

    dataset.json has the required keys; the cases are the images of imagesTr (as nnU-Net lists them:
    every file with the file ending) and numTraining equals their number; every case has its label and
    every label its image; label values are consecutive from 0 and each label map holds only those;
    image and label have the same shape and spacing.
    """
    description = json.loads((folder / "dataset.json").read_text())
    assert {"labels", "channel_names", "numTraining", "file_ending"} <= set(description)
    ending = description["file_ending"]
    image_files = sorted(p.name for p in (folder / "imagesTr").iterdir() if p.name.endswith(ending))
    label_files = sorted(p.name for p in (folder / "labelsTr").iterdir() if p.name.endswith(ending))
    assert all(IMAGE_NAME.match(name) for name in image_files), image_files  # no temporary files
    assert all(LABEL_NAME.match(name) for name in label_files), label_files
    assert sorted(os.listdir(folder / "imagesTr")) == image_files
    assert sorted(os.listdir(folder / "labelsTr")) == label_files
    cases = {IMAGE_NAME.match(name)["case"] for name in image_files}
    assert description["numTraining"] == len(cases), (description["numTraining"], cases)
    assert {LABEL_NAME.match(name)["case"] for name in label_files} == cases
    values = sorted(int(v) for v in description["labels"].values())
    assert values == list(range(len(values)))
    for case in cases:
        image = sitk.ReadImage(str(folder / "imagesTr" / f"{case}_0000{ending}"))
        label = sitk.ReadImage(str(folder / "labelsTr" / f"{case}{ending}"))
        assert image.GetSize() == label.GetSize()
        np.testing.assert_allclose(image.GetSpacing(), label.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(label)).tolist()) <= set(values)
    return cases


def check_after_kill(folder: Path) -> None:
    """Before any repair: no temporary file in imagesTr/labelsTr and no image without its label."""
    images = sorted(os.listdir(folder / "imagesTr")) if (folder / "imagesTr").exists() else []
    labels = sorted(os.listdir(folder / "labelsTr")) if (folder / "labelsTr").exists() else []
    assert all(IMAGE_NAME.match(name) for name in images), images
    assert all(LABEL_NAME.match(name) for name in labels), labels
    label_cases = {LABEL_NAME.match(name)["case"] for name in labels}
    assert {IMAGE_NAME.match(name)["case"] for name in images} <= label_cases, (images, labels)


@pytest.mark.parametrize("scenario", ["new_case", "overwrite"])
def test_an_export_killed_at_any_file_operation_leaves_whole_cases(ct_node, tmp_path: Path,  # noqa: ANN001
                                                                    scenario: str) -> None:
    from TSFMSegmentationLib.export import CaseExistsError, dataset_folder, export_case, repair_dataset

    old_segmentation = segmented(ct_node, {1: "air", 2: "fat", 3: "bone"})
    new_segmentation = segmented(ct_node, {1: "air"})
    template = dataset_folder(tmp_path / "template", 510, "Killed")
    export_case(template, "case_a", ct_node, old_segmentation)
    old_label = read_labels(template / "labelsTr" / "case_a.nii.gz")
    case = "case_b" if scenario == "new_case" else "case_a"
    expected_cases = {"case_a", "case_b"} if scenario == "new_case" else {"case_a"}

    counting = tmp_path / "counting"
    shutil.copytree(template, counting)
    with armed(KillSwitch(None)) as switch:
        export_case(counting, case, ct_node, new_segmentation, overwrite=True)
    total = switch.count
    assert total >= 8, switch.log
    new_label = read_labels(counting / "labelsTr" / f"{case}.nii.gz")
    assert not np.array_equal(new_label, old_label)

    for kill_at in range(1, total + 1):
        folder = tmp_path / f"kill_{kill_at:02d}"
        shutil.copytree(template, folder)
        with pytest.raises(Killed), armed(KillSwitch(kill_at)):
            export_case(folder, case, ct_node, new_segmentation, overwrite=True)
        check_after_kill(folder)

        repair_dataset(folder)
        cases = check_dataset(folder)
        assert not (folder / ".staging").exists()
        written = folder / "labelsTr" / f"{case}.nii.gz"
        if scenario == "new_case":
            assert cases in ({"case_a"}, {"case_a", "case_b"}), (kill_at, cases)
            assert written.exists() == (folder / "provenance" / "case_b.json").exists()
            if written.exists():
                np.testing.assert_array_equal(read_labels(written), new_label)
        else:
            assert cases == {"case_a"}
            assert any(np.array_equal(read_labels(written), label) for label in (old_label, new_label)), kill_at

        if scenario == "new_case" and cases == {"case_a", "case_b"}:
            with pytest.raises(CaseExistsError):
                export_case(folder, case, ct_node, new_segmentation)
        export_case(folder, case, ct_node, new_segmentation, overwrite=True)
        assert check_dataset(folder) == expected_cases, kill_at
        np.testing.assert_array_equal(read_labels(written), new_label)
        assert json.loads((folder / "dataset.json").read_text())["numTraining"] == len(expected_cases)
        leftovers = [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
        assert leftovers == [], (kill_at, leftovers)


def test_nnunet_accepts_the_dataset_after_a_kill_between_label_and_image(ct_node, tmp_path: Path) -> None:  # noqa: ANN001
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from TSFMSegmentationLib.export import dataset_folder, export_case, repair_dataset

    folder = dataset_folder(tmp_path, 511, "Killed")
    export_case(folder, "case_a", ct_node, segmented(ct_node, {1: "air", 2: "fat", 3: "bone"}))
    segmentation = segmented(ct_node, {1: "air", 2: "fat"})
    shutil.copytree(folder, tmp_path / "count")
    with armed(KillSwitch(None)) as switch:
        export_case(tmp_path / "count", "case_b", ct_node, segmentation)
    label_move = next(n for n, what in enumerate(switch.log, 1) if what.startswith("os.replace") and "labelsTr" in what)
    with pytest.raises(Killed), armed(KillSwitch(label_move + 1)):
        export_case(folder, "case_b", ct_node, segmentation)
    assert (folder / "labelsTr" / "case_b.nii.gz").exists() and not (folder / "imagesTr" / "case_b_0000.nii.gz").exists()
    verify_dataset_integrity(str(folder), num_processes=1)  # the lone label is invisible to nnU-Net
    repair_dataset(folder)  # finishes the committed case
    assert check_dataset(folder) == {"case_a", "case_b"}
    verify_dataset_integrity(str(folder), num_processes=1)


def test_damage_left_by_an_older_export_is_repaired(ct_node, tmp_path: Path) -> None:  # noqa: ANN001
    """Temporary files inside imagesTr/labelsTr, an image without its label and a wrong numTraining."""
    from TSFMSegmentationLib.export import CaseExistsError, dataset_folder, export_case

    folder = dataset_folder(tmp_path, 512, "Old")
    segmentation = segmented(ct_node, {1: "air", 2: "fat", 3: "bone"})
    export_case(folder, "case_a", ct_node, segmentation)
    export_case(folder, "case_b", ct_node, segmentation)
    shutil.copy(folder / "labelsTr" / "case_b.nii.gz", folder / "labelsTr" / ".case_c-k2j3l4.nii.gz")
    shutil.copy(folder / "imagesTr" / "case_b_0000.nii.gz", folder / "imagesTr" / ".case_c_0000-x8y9.nii.gz")
    (folder / "labelsTr" / "case_b.nii.gz").unlink()  # killed after its image landed, before its label
    (folder / ".dataset.json-abc.tmp").write_text("{")
    description = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**description, "numTraining": 7}))

    with pytest.raises(CaseExistsError):  # case_a is whole and still refused without overwrite
        export_case(folder, "case_a", ct_node, segmentation)
    assert check_dataset(folder) == {"case_a"}  # the repair ran first
    orphaned = [p.relative_to(folder).parts[2:] for p in (folder / ".orphaned").rglob("*") if p.is_file()]
    assert sorted(orphaned) == [("imagesTr", "case_b_0000.nii.gz"), ("provenance", "case_b.json")]
    export_case(folder, "case_b", ct_node, segmentation)  # not refused: the half case is gone
    export_case(folder, "case_c", ct_node, segmentation)
    assert check_dataset(folder) == {"case_a", "case_b", "case_c"}
