"""Reading segmentation datasets from disk into a list of cases: nnU-Net v2 raw, MSD, and case folders.

- **nnU-Net v2 raw** (also what the Slicer module exports): ``dataset.json`` with ``channel_names``,
  ``labels`` {name: value}, ``file_ending``; ``imagesTr/<case>_<CCCC><ending>`` per channel and
  ``labelsTr/<case><ending>``. A provenance JSON per case (``<case>.json`` in ``provenance/``,
  ``labelsTr/`` or the root) is attached to the case when present.
- **Medical Segmentation Decathlon** (nnU-Net v1 raw): ``dataset.json`` with ``modality``, ``labels``
  {value: name} and ``training`` [{image, label}]; 4D multi-modal images are not split here.
- **Case folders**: one sub-folder per case holding ``image_name`` and ``label_name`` (e.g. ``ct.nii.gz``
  and ``mask.nii.gz``), with the class names given by the caller.
- **Case lists**: cases named one by one in the config (``{id, image, label}``), for loose files.
- **Mask folders** (AbdomenAtlas / SuPreM): one sub-folder per case holding the image and a folder of
  per-class binary masks ``<masks>/<class name>.nii.gz``. Masks may overlap (a tumour inside its organ),
  which one label map cannot hold, so they stay one channel per class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Case:
    """One training case: image files (one per channel), an optional label map, and where it came from.

    ``masks`` (instead of ``label``): one binary mask file per class of the dataset, in ascending order of
    the class values.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    dataset: str
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    masks: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Dataset:
    """A dataset: its name, label values -> names (background excluded), channel names and cases."""

    name: str
    root: Path
    classes: dict[int, str]
    channels: tuple[str, ...]
    cases: tuple[Case, ...]

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise DatasetError(f"dataset {self.name!r} has no case {case_id!r}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise DatasetError(f"{path}: missing") from error
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return data


def _provenance(root: Path, case_id: str) -> dict[str, Any]:
    for folder in (root / "provenance", root / "labelsTr", root):
        path = folder / f"{case_id}.json"
        if path.is_file():
            return _read_json(path)
    return {}


def _nnunet_v2(root: Path, meta: dict[str, Any], name: str) -> Dataset:
    ending = meta.get("file_ending", ".nii.gz")
    channels = meta["channel_names"]
    labels = meta.get("labels")
    if not isinstance(labels, dict) or "background" not in labels:
        raise DatasetError(f"{root / 'dataset.json'}: 'labels' must map names to values and include 'background'")
    classes: dict[int, str] = {}
    for label_name, value in labels.items():
        if isinstance(value, list):
            raise DatasetError(f"{root / 'dataset.json'}: region label {label_name!r} {value} is not supported; "
                               "use one integer per class")
        if int(value) != 0:
            classes[int(value)] = str(label_name)
    num_channels = len(channels)
    cases = []
    for label in sorted((root / "labelsTr").glob(f"*{ending}")):
        case_id = label.name[: -len(ending)]
        images = tuple(root / "imagesTr" / f"{case_id}_{c:04d}{ending}" for c in range(num_channels))
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise DatasetError(f"case {case_id!r} of {root}: image files missing: {missing}")
        cases.append(Case(case_id, images, label, name, _provenance(root, case_id)))
    expected = meta.get("numTraining")
    if expected is not None and int(expected) != len(cases):
        raise DatasetError(f"{root / 'dataset.json'} says numTraining={expected} but labelsTr has {len(cases)} cases")
    ordered = sorted(channels.items(), key=lambda item: int(item[0]))
    return Dataset(name, root, classes, tuple(str(v) for _, v in ordered), tuple(cases))


def _msd(root: Path, meta: dict[str, Any], name: str) -> Dataset:
    classes = {int(k): str(v) for k, v in meta.get("labels", {}).items() if int(k) != 0}
    modality = meta.get("modality", {"0": "image"})
    cases = []
    for entry in meta["training"]:
        image, label = root / entry["image"], root / entry["label"]
        case_id = image.name.split(".")[0]
        for path in (image, label):
            if not path.is_file():
                raise DatasetError(f"case {case_id!r} of {root}: {path} is missing")
        cases.append(Case(case_id, (image,), label, name, _provenance(root, case_id)))
    ordered = sorted(modality.items(), key=lambda item: int(item[0]))
    return Dataset(name, root, classes, tuple(str(v) for _, v in ordered), tuple(cases))


def read_dataset(root: str | Path, name: str | None = None) -> Dataset:
    """An nnU-Net v2 raw or MSD dataset folder (told apart by their ``dataset.json`` keys)."""
    root = Path(root)
    meta = _read_json(root / "dataset.json")
    name = name or str(meta.get("name") or root.name)
    if "channel_names" in meta:
        return _nnunet_v2(root, meta, name)
    if "training" in meta and "modality" in meta:
        return _msd(root, meta, name)
    raise DatasetError(f"{root / 'dataset.json'}: neither nnU-Net v2 ('channel_names') nor MSD ('training', 'modality')")


def read_case_folders(root: str | Path, image_name: str, label_name: str | None, classes: dict[int, str],
                      name: str | None = None, channel: str = "CT") -> Dataset:
    """Every sub-folder of ``root`` that holds ``image_name`` is a case (its label ``label_name`` if given)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        image = folder / image_name
        if not image.is_file():
            continue
        label = folder / label_name if label_name else None
        if label is not None and not label.is_file():
            raise DatasetError(f"case {folder.name!r}: {label} is missing")
        cases.append(Case(folder.name, (image,), label, name or root.name, _provenance(folder, folder.name)))
    if not cases:
        raise DatasetError(f"{root}: no sub-folder holds {image_name!r}")
    return Dataset(name or root.name, root, {int(k): str(v) for k, v in classes.items()}, (channel,), tuple(cases))


def read_mask_folders(root: str | Path, image_name: str, masks_folder: str, classes: dict[int, str],
                      name: str | None = None, channel: str = "CT") -> Dataset:
    """Every sub-folder of ``root`` holding ``image_name`` is a case with ``masks_folder/<class>.nii.gz`` per class."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    classes = {int(k): str(v) for k, v in classes.items()}
    if not classes:
        raise DatasetError(f"mask dataset {root}: 'classes' must name the mask files")
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        image = folder / image_name
        if not image.is_file():
            continue
        masks = tuple(folder / masks_folder / f"{classes[value]}.nii.gz" for value in sorted(classes))
        missing = [str(p) for p in masks if not p.is_file()]
        if missing:
            raise DatasetError(f"case {folder.name!r}: mask files missing: {missing[:5]}")
        cases.append(Case(folder.name, (image,), None, name or root.name, _provenance(folder, folder.name), masks))
    if not cases:
        raise DatasetError(f"{root}: no sub-folder holds {image_name!r}")
    return Dataset(name or root.name, root, classes, (channel,), tuple(cases))


def read_case_list(entries: list[dict[str, Any]], classes: dict[int, str], name: str,
                   root: str | Path = ".") -> Dataset:
    """Cases listed one by one: ``[{id, image, label?}]`` with paths relative to ``root``."""
    root = Path(root)
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or "id" not in entry or "image" not in entry:
            raise DatasetError(f"dataset {name!r}: each listed case needs 'id' and 'image', got {entry!r}")
        image = root / entry["image"]
        label = root / entry["label"] if entry.get("label") else None
        for path in (image, label):
            if path is not None and not path.is_file():
                raise DatasetError(f"case {entry['id']!r} of {name!r}: {path} is missing")
        cases.append(Case(str(entry["id"]), (image,), label, name))
    return Dataset(name, root, {int(k): str(v) for k, v in classes.items()}, ("CT",), tuple(cases))


def dataset_from_config(settings: dict[str, Any]) -> Dataset:
    """``{root, format: nnunet|msd|folders|masks|list, name?, image?, label?, masks?, classes?, cases?}``.

    ``classes_file`` (a JSON {value: name}, optionally under ``classes_key``) can stand in for ``classes``.
    """
    if "classes_file" in settings:
        table = _read_json(Path(settings["classes_file"]))
        key = settings.get("classes_key")
        if key is not None and key not in table:
            raise DatasetError(f"{settings['classes_file']}: no key {key!r} (has {sorted(table)})")
        settings = {**settings, "classes": {int(k): v for k, v in (table[key] if key else table).items() if int(k)}}
    if settings.get("format") == "list":
        if "name" not in settings or "cases" not in settings:
            raise DatasetError(f"dataset entry {settings} of format 'list' needs 'name' and 'cases'")
        return read_case_list(settings["cases"], settings.get("classes", {1: "foreground"}), settings["name"],
                              settings.get("root", "."))
    if "root" not in settings:
        raise DatasetError(f"dataset entry {settings} needs a 'root'")
    layout = settings.get("format", "nnunet")
    if layout in ("nnunet", "msd"):
        return read_dataset(settings["root"], settings.get("name"))
    if layout == "folders":
        return read_case_folders(settings["root"], settings.get("image", "image.nii.gz"), settings.get("label"),
                                 settings.get("classes", {1: "foreground"}), settings.get("name"))
    if layout == "masks":
        return read_mask_folders(settings["root"], settings.get("image", "ct.nii.gz"),
                                 settings.get("masks", "segmentations"), settings.get("classes", {}),
                                 settings.get("name"))
    raise DatasetError(f"dataset format {layout!r} is not one of nnunet, msd, folders, masks, list")


def split_cases(cases: tuple[Case, ...] | list[Case], validation: list[str]) -> tuple[list[Case], list[Case]]:
    """(training, validation) with the validation cases named by id; unknown ids are an error."""
    known = {c.case_id for c in cases}
    unknown = sorted(set(validation) - known)
    if unknown:
        raise DatasetError(f"validation cases {unknown} are not in the dataset (it has {sorted(known)})")
    held = set(validation)
    return [c for c in cases if c.case_id not in held], [c for c in cases if c.case_id in held]
