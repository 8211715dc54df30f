"""Export reviewed cases as an nnU-Net v2 raw dataset, ready for fine-tuning.

Layout (nnU-Net v2 "raw" format)::

    <dataset>/dataset.json            channel_names, labels {name: index}, numTraining, file_ending
    <dataset>/imagesTr/<case>_0000.nii.gz
    <dataset>/labelsTr/<case>.nii.gz  uint8 (uint16 beyond 255 labels), on the image's grid
    <dataset>/provenance/<case>.json  per-segment model, prompts, review, edited

Only reviewed labels go into training data: by default a case holds the segments whose review status
is *accepted*; ``include_unreviewed=True`` adds the pending ones, and rejected segments are never
exported. Voxels of a segment left out are background in the label map; the case's provenance record
lists what was left out. A case with nothing to export is refused before anything is written.

Label indices stay consistent across cases: a segment name already in dataset.json keeps its index,
a new name gets the next free one (so indices stay consecutive, as nnU-Net requires). Image and
label carry the volume's world geometry (parent transforms hardened). Every file is written to a
temporary name in its final folder and renamed, so a crash never leaves a half-written case, and an
existing case is only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from . import provenance, terminology
from .segments import read_segment_crop, segment_ids
from .volumes import image_geometry, numpy_to_vtk_matrix

FILE_ENDING = ".nii.gz"
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(.+)$")
# The first id a new dataset gets: clear of the low ids public datasets use (the Medical Segmentation
# Decathlon is 001-010) so an exported dataset can sit beside them in one nnUNet_raw folder.
FIRST_DATASET_ID = 501


class CaseExistsError(FileExistsError):
    """The case is already in the dataset and overwriting was not confirmed."""


class DatasetError(ValueError):
    """dataset.json is not an nnU-Net v2 dataset description this export can append to."""


class NothingToExportError(ValueError):
    """The segmentation has no segment the export would write (none accepted, by default)."""


@dataclass(frozen=True)
class ExportedCase:
    image: Path
    label: Path
    provenance: Path
    labels: dict[str, int]


def dataset_folder(root: str | Path, dataset_id: int, name: str) -> Path:
    """nnU-Net's naming: ``<root>/Dataset<id:03d>_<name>``."""
    if not 1 <= int(dataset_id) <= 999 or not CASE_ID.match(name):
        raise ValueError(f"dataset id must be 1-999 and name alphanumeric, got {dataset_id!r}, {name!r}")
    return Path(root) / f"Dataset{int(dataset_id):03d}_{name}"


def default_dataset_folder(documents_dir: str | Path, name: str = "Reviewed", nnunet_raw: str | Path | None = None,
                           first_id: int = FIRST_DATASET_ID) -> Path:
    """Where exports go unless the user picks a folder: ``<root>/Dataset<NNN>_<name>``.

    ``root`` is ``nnunet_raw`` when given (the caller passes the ``nnUNet_raw`` environment variable), else
    ``<documents_dir>/TSFMSegmentation``. A dataset of that name already in ``root`` is reused, so cases
    accumulate in one dataset; otherwise the id is the lowest from ``first_id`` that no ``Dataset<NNN>_*``
    folder in ``root`` uses. Nothing is created.
    """
    if not CASE_ID.match(name):
        raise ValueError(f"dataset name {name!r} must be letters, digits, '_' or '-' (it names a folder)")
    root = Path(nnunet_raw) if nnunet_raw else Path(documents_dir) / "TSFMSegmentation"
    used: dict[int, str] = {}
    if root.is_dir():
        for child in root.iterdir():
            match = DATASET_FOLDER.match(child.name)
            if match and child.is_dir():
                used.setdefault(int(match.group(1)), match.group(2))
    same_name = sorted(dataset_id for dataset_id, existing in used.items() if existing == name)
    if same_name:
        return dataset_folder(root, same_name[0], name)
    dataset_id = next((i for i in range(int(first_id), 1000) if i not in used), None)
    if dataset_id is None:
        raise ValueError(f"no free dataset id from {first_id} to 999 in {root}")
    return dataset_folder(root, dataset_id, name)


def exported_segments(records: list[dict[str, Any]], include_unreviewed: bool = False) -> list[dict[str, Any]]:
    """The provenance records an export writes: accepted ones, plus pending ones if asked; never rejected."""
    wanted = {provenance.ACCEPTED, provenance.PENDING} if include_unreviewed else {provenance.ACCEPTED}
    return [record for record in records if record["status"] in wanted]


def label_key(name: str) -> str:
    """The name under which a segment is stored in dataset.json ("Kidney_Left" == "left kidney")."""
    structure, side = terminology.normalize(name)
    return f"{structure} {side}".strip().replace(" ", "_")


def read_dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    if not path.exists():
        return {}
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from error
    for key in ("channel_names", "labels", "file_ending"):
        if key not in description:
            raise DatasetError(f"{path} has no '{key}'; is it an nnU-Net v2 dataset?")
    if description["file_ending"] != FILE_ENDING:
        raise DatasetError(f"{path} uses file ending {description['file_ending']!r}; this export writes "
                           f"{FILE_ENDING!r}")
    return description


def merged_labels(existing: dict[str, int], names: list[str]) -> dict[str, int]:
    """{name: index} with background 0, existing indices kept, new names appended in order."""
    labels = {"background": 0, **{k: int(v) for k, v in existing.items()}}
    for name in names:
        key = label_key(name)
        if key not in labels:
            labels[key] = max(labels.values()) + 1
    return labels


def export_case(
    folder: str | Path,
    case_id: str,
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    segmentation_node: slicer.vtkMRMLSegmentationNode,
    channel_name: str = "CT",
    overwrite: bool = False,
    annotator: str = "",
    include_unreviewed: bool = False,
) -> ExportedCase:
    """Write one case (image, label map, provenance) and update dataset.json.

    Exports the accepted segments (and the pending ones with ``include_unreviewed``). Raises
    NothingToExportError, writing nothing, when there is no such segment, and CaseExistsError if
    ``case_id`` is already there and ``overwrite`` is False.
    """
    folder = Path(folder)
    if not CASE_ID.match(case_id):
        raise ValueError(f"case id {case_id!r} must be letters, digits, '_' or '-' (it names files)")
    records = provenance.describe_all(segmentation_node, volume_node)
    segments = exported_segments(records, include_unreviewed)
    if not segments:
        counts = {state: sum(r["status"] == state for r in records) for state in provenance.REVIEW_STATES}
        summary = ", ".join(f"{count} {state}" for state, count in counts.items() if count) or "no segments"
        wanted = "accepted or pending" if include_unreviewed else "accepted"
        raise NothingToExportError(
            f"nothing to export from '{segmentation_node.GetName()}': no segment is {wanted} ({summary}). "
            f"Accept the reviewed segments first"
            + ("" if include_unreviewed else ", or include unreviewed (pending) segments")
            + f"; nothing was written to {folder}")
    image_path = folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"
    label_path = folder / "labelsTr" / f"{case_id}{FILE_ENDING}"
    record_path = folder / "provenance" / f"{case_id}.json"
    if not overwrite and (image_path.exists() or label_path.exists()):
        raise CaseExistsError(f"case '{case_id}' is already in {folder}; pass overwrite=True to replace it")
    description = read_dataset_json(folder)
    channels = description.get("channel_names", {"0": channel_name})
    if channels != {"0": channel_name}:
        raise DatasetError(f"{folder / 'dataset.json'} has channels {channels}, this case is {{'0': "
                           f"{channel_name!r}}}")

    exported_ids = {record["segment_id"] for record in segments}
    labels = merged_labels(description.get("labels", {}), [record["name"] for record in segments])
    label_map = _label_map(segmentation_node, volume_node, segments, labels)

    for sub in ("imagesTr", "labelsTr", "provenance"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    _write_volume_atomically(volume_node, slicer.util.arrayFromVolume(volume_node), image_path, label=False)
    _write_volume_atomically(volume_node, label_map, label_path, label=True)
    case_record = {
        "case": case_id, "annotator": annotator, "image": volume_node.GetName(),
        "segmentation": segmentation_node.GetName(), "written": provenance.now_iso(),
        "segments": [{**record, "label": labels[label_key(record["name"])]} for record in segments],
        "left_out": [{key: record[key] for key in ("segment_id", "name", "status", "model")}
                     for record in records if record["segment_id"] not in exported_ids],
    }
    _write_text_atomically(record_path, json.dumps(case_record, indent=2, sort_keys=True))
    description.update(
        channel_names=channels, labels=labels, file_ending=FILE_ENDING,
        numTraining=len(list((folder / "labelsTr").glob(f"*{FILE_ENDING}"))),
    )
    description.setdefault("description", "Exported from 3D Slicer by TSFMSegmentation; provenance/ per case")
    _write_text_atomically(folder / "dataset.json", json.dumps(description, indent=2))
    return ExportedCase(image_path, label_path, record_path, labels)


def _label_map(segmentation_node, volume_node, segments: list[dict[str, Any]],  # noqa: ANN001
               labels: dict[str, int]) -> np.ndarray:
    """(K, J, I) uint8/uint16: each voxel the index of the last listed segment covering it."""
    k, j, i = image_geometry(volume_node).shape_kji
    dtype = np.uint8 if max(labels.values()) < 256 else np.uint16
    label_map = np.zeros((k, j, i), dtype)
    known = set(segment_ids(segmentation_node))
    for record in segments:
        if record["segment_id"] not in known:
            continue
        mask = read_segment_crop(segmentation_node, record["segment_id"], volume_node,
                                 (0, i - 1, 0, j - 1, 0, k - 1))
        label_map[mask > 0] = labels[label_key(record["name"])]
    return label_map


def _temporary_path(path: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=FILE_ENDING, dir=path.parent)
    os.close(handle)
    return Path(name)


def _write_volume_atomically(volume_node, array: np.ndarray, path: Path, label: bool) -> None:  # noqa: ANN001
    """NIfTI through Slicer's own storage node, with the volume's world (hardened) geometry."""
    node_class = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = slicer.mrmlScene.AddNewNodeByClass(node_class, "__tsfm_export__")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    temporary = _temporary_path(path)
    try:
        node.SetIJKToRASMatrix(numpy_to_vtk_matrix(image_geometry(volume_node).ijk_to_world))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
        slicer.mrmlScene.AddNode(storage)
        storage.SetFileName(str(temporary))
        storage.SetUseCompression(True)
        if not storage.WriteData(node):
            raise OSError(f"Slicer could not write {path}")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        slicer.mrmlScene.RemoveNode(storage)
        slicer.mrmlScene.RemoveNode(node)


def _write_text_atomically(path: Path, text: str) -> None:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
