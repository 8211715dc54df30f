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
label carry the volume's world geometry (parent transforms hardened). An existing case is only
replaced with ``overwrite=True``.

A case is written whole or not at all, even if Slicer is killed in the middle:

1. every file of the case (image, label, provenance record and the new dataset.json) is written into
   ``<dataset>/.staging/<case>/``, on the same filesystem but outside imagesTr/labelsTr, where
   nnU-Net never looks;
2. a ``COMMIT`` file listing the moves is renamed into place: from then on the case counts as written;
3. the files are renamed into place, label first, then image, provenance and dataset.json, and
   the staging folder is removed.

``repair_dataset`` runs at the start of every export (and can be called on its own): a staging
folder with its ``COMMIT`` file is finished (step 3 again, for the files not yet moved), one without
is deleted; temporary files in the dataset are deleted; an image without its label, or a label
without its image, is moved out of imagesTr/labelsTr into ``<dataset>/.orphaned/<time>/``; and
``numTraining`` is set to the number of complete cases (label and every channel's image).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
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
STAGING = ".staging"
ORPHANED = ".orphaned"
COMMIT_FILE = "COMMIT"
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(FILE_ENDING) + "$")

log = logging.getLogger(__name__)


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
    repair_dataset(folder)
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

    staging = folder / STAGING / case_id
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr", "provenance"):
        (folder / sub).mkdir(exist_ok=True)
    _write_volume(volume_node, label_map, staging / label_path.name, label=True)
    _write_volume(volume_node, slicer.util.arrayFromVolume(volume_node), staging / image_path.name, label=False)
    case_record = {
        "case": case_id, "annotator": annotator, "image": volume_node.GetName(),
        "segmentation": segmentation_node.GetName(), "written": provenance.now_iso(),
        "segments": [{**record, "label": labels[label_key(record["name"])]} for record in segments],
        "left_out": [{key: record[key] for key in ("segment_id", "name", "status", "model")}
                     for record in records if record["segment_id"] not in exported_ids],
    }
    _write_text_atomically(staging / record_path.name, json.dumps(case_record, indent=2, sort_keys=True))
    description.update(
        channel_names=channels, labels=labels, file_ending=FILE_ENDING,
        numTraining=len(complete_cases(folder) | {case_id}),
    )
    description.setdefault("description", "Exported from 3D Slicer by TSFMSegmentation; provenance/ per case")
    _write_text_atomically(staging / "dataset.json", json.dumps(description, indent=2))
    # The label moves first: nnU-Net lists cases by their images, so an image never stands without its label.
    moves = [[label_path.name, f"labelsTr/{label_path.name}"], [image_path.name, f"imagesTr/{image_path.name}"],
             [record_path.name, f"provenance/{record_path.name}"], ["dataset.json", "dataset.json"]]
    _write_text_atomically(staging / COMMIT_FILE, json.dumps(moves))  # the commit point
    _finish_staged_case(folder, staging)
    return ExportedCase(image_path, label_path, record_path, labels)


def complete_cases(folder: str | Path, channels: int = 1) -> set[str]:
    """Case ids with a label in labelsTr and an image for each of ``channels`` channels in imagesTr."""
    folder = Path(folder)
    images: dict[str, set[int]] = {}
    for path in _visible_files(folder / "imagesTr"):
        match = CHANNEL_FILE.match(path.name)
        if match:
            images.setdefault(match["case"], set()).add(int(match["channel"]))
    labels = {path.name[: -len(FILE_ENDING)] for path in _visible_files(folder / "labelsTr")
              if path.name.endswith(FILE_ENDING)}
    return {case for case in labels if images.get(case, set()) >= set(range(channels))}


def repair_dataset(folder: str | Path) -> list[str]:
    """Leave only whole cases after an interrupted export; returns one line per thing done (also logged).

    Finishes a staged case whose ``COMMIT`` file exists and deletes one without it; deletes temporary
    files; moves an image without its label (or a label without its image) to
    ``<dataset>/.orphaned/<time>/``; sets ``numTraining`` to the number of complete cases. Running it
    again does nothing; an interrupted repair is finished by the next one.
    """
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    staging_root = folder / STAGING
    if staging_root.is_dir():
        for staging in sorted(p for p in staging_root.iterdir() if p.is_dir()):
            if (staging / COMMIT_FILE).is_file():
                _finish_staged_case(folder, staging)
                done.append(f"finished the interrupted export of case '{staging.name}'")
            else:
                shutil.rmtree(staging)
                done.append(f"removed the unfinished export of case '{staging.name}' (nothing of it was in the dataset)")
        _remove_empty(staging_root)
    for sub in (".", "imagesTr", "labelsTr", "provenance"):
        directory = folder / sub
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.name.startswith(".") and path.is_file() and path.name.endswith((FILE_ENDING, ".tmp")):
                path.unlink()
                done.append(f"deleted the temporary file {path.relative_to(folder)}")
    channels = _channel_count(folder)
    whole = complete_cases(folder, channels)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for sub, case_of in (("imagesTr", _image_case), ("labelsTr", _label_case), ("provenance", _record_case)):
        for path in sorted(_visible_files(folder / sub)):
            case = case_of(path.name)
            if case is None or case in whole:
                continue
            target = folder / ORPHANED / stamp / sub / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            done.append(f"moved {sub}/{path.name} (its case is incomplete) to {target.relative_to(folder)}")
    _fix_num_training(folder, len(whole), done)
    for line in done:
        log.warning("%s: %s", folder, line)
    return done


def _finish_staged_case(folder: Path, staging: Path) -> None:
    """Move the staged files the ``COMMIT`` file lists into place (those not moved yet), then drop the folder."""
    moves = json.loads((staging / COMMIT_FILE).read_text(encoding="utf-8"))
    for name, destination in moves:
        source = staging / name
        if source.exists():
            os.replace(source, folder / destination)
    (staging / COMMIT_FILE).unlink()
    shutil.rmtree(staging)
    _remove_empty(folder / STAGING)


def _remove_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (another staged case) or already gone


def _visible_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [path for path in directory.iterdir() if not path.name.startswith(".") and path.is_file()]


def _image_case(name: str) -> str | None:
    match = CHANNEL_FILE.match(name)
    return match["case"] if match else None


def _label_case(name: str) -> str | None:
    return name[: -len(FILE_ENDING)] if name.endswith(FILE_ENDING) else None


def _record_case(name: str) -> str | None:
    return name[: -len(".json")] if name.endswith(".json") else None


def _channel_count(folder: Path) -> int:
    try:
        return max(1, len(read_dataset_json(folder).get("channel_names", {"0": ""})))
    except DatasetError:
        return 1


def _fix_num_training(folder: Path, count: int, done: list[str]) -> None:
    try:
        description = read_dataset_json(folder)
    except DatasetError:
        return  # the export that follows reports it
    if description and description.get("numTraining") != count:
        done.append(f"numTraining {description.get('numTraining')} -> {count} (the complete cases)")
        description["numTraining"] = count
        _write_text_atomically(folder / "dataset.json", json.dumps(description, indent=2))


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


def _write_volume(volume_node, array: np.ndarray, path: Path, label: bool) -> None:  # noqa: ANN001
    """NIfTI through Slicer's own storage node, with the volume's world (hardened) geometry.

    Written straight to ``path``: it is a file in the staging folder, which only counts once committed.
    """
    node_class = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = slicer.mrmlScene.AddNewNodeByClass(node_class, "__tsfm_export__")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    try:
        node.SetIJKToRASMatrix(numpy_to_vtk_matrix(image_geometry(volume_node).ijk_to_world))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
        slicer.mrmlScene.AddNode(storage)
        storage.SetFileName(str(path))
        storage.SetUseCompression(True)
        if not storage.WriteData(node):
            raise OSError(f"Slicer could not write {path}")
    finally:
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
