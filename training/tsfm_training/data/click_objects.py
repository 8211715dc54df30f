"""Objects to click on: tumours in CT, MR and PET, organs and bones, and unlabelled pseudo-objects.

A class-agnostic click model learns "segment the thing under the click", so its training set is a
pool of objects of every kind, each a label of a volume on the model grid:

- ``tumour``: the soft-tissue sarcoma of each patient in its CT, T1 MR and FDG-PET (``sts/<case>/``);
- ``organ``: TotalSegmentator's organ, vessel, muscle and bone classes on its two example CTs
  (``totalseg/``), except the classes held out for evaluation, which are removed from the label maps;
- ``pseudo``: intensity-coherent connected regions of any training volume (as SAM-Med3D and VISTA3D
  add supervoxel-like objects): the smoothed, normalised image is cut into a few intensity bands and
  each band into connected components, opened so thin bridges do not join neighbours. Regions that
  touch a held-out class are dropped, so no held-out object is learnt under another name.

Every volume is read once, brought to the model grid (image trilinear, labels nearest) and normalised
with its modality's window (``tsfm_backend.modality``). Arrays are (K, J, I); spacing is (K, J, I) mm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tsfm_backend.grid_alignment import labels_on_image_grid
from tsfm_backend.image_io import read_volume
from tsfm_backend.modality import resolve_normalization
from tsfm_backend.preprocessing import normalize, resample_linear

# Image files of a sarcoma patient and their masks, with the modality each is.
STS_FILES = {"ct": ("ct.nii.gz", "mask.nii.gz", "CT"), "mr_t1": ("mr_t1.nii.gz", "mr_t1_mask.nii.gz", "MR"),
             "pet": ("pet.nii.gz", "pet_mask.nii.gz", "PET")}
# TotalSegmentator's example CTs with its "total" label maps on the same grid.
TOTALSEG_PAIRS = (("example_ct_sm.nii.gz", "example_seg.nii.gz"), ("example_ct_dicom", "example_seg_dicom.nii.gz"))
# Objects smaller than this many model-grid voxels are too small to click reliably.
MIN_OBJECT_VOXELS = 30
KINDS = ("tumour", "organ", "pseudo")


@dataclass
class ObjectVolume:
    """One image on the model grid with its objects.

    ``image`` (K, J, I) float32 normalised; ``labels`` (K, J, I) uint16, 0 background; ``names`` label ->
    name; ``kind`` of its objects; ``group`` the patient (or source) it belongs to, for splitting.
    """

    name: str
    group: str
    modality: str
    kind: str
    image: np.ndarray
    labels: np.ndarray
    names: dict[int, str]


@dataclass(frozen=True)
class TrainingObject:
    """One object: ``volumes[volume].labels == label``, inside the inclusive box [low, high]."""

    volume: int
    label: int
    kind: str
    low: tuple[int, int, int]
    high: tuple[int, int, int]


def to_model_grid(path: Path, label_path: Path | None, spacing: tuple[float, float, float],
                  normalization: dict, modality: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(normalised image, uint16 labels, modality) of an image file and its label map on the model grid."""
    volume = read_volume(path)
    labels = labels_on_image_grid(read_volume(label_path), volume, str(label_path)) if label_path is not None \
        else np.zeros(volume.shape, np.uint16)
    resolved = resolve_normalization(normalization, volume.array, modality)
    shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(volume.shape, volume.spacing_kji, spacing,
                                                               strict=True))
    image = normalize(torch.from_numpy(volume.array.astype(np.float32))[None], resolved)
    image = resample_linear(image, shape)[0].numpy().astype(np.float32)
    grid = F.interpolate(torch.from_numpy(labels.astype(np.int32))[None, None].float(), size=shape,
                         mode="nearest-exact")[0, 0].numpy().astype(np.uint16)
    return image, grid, resolved.get("modality", modality)


def sts_volumes(root: Path, patients: list[str], modalities: list[str], spacing: tuple[float, float, float],
                normalization: dict) -> list[ObjectVolume]:
    """The tumour of each patient in each of ``modalities`` (keys of ``STS_FILES``)."""
    volumes = []
    for patient in patients:
        for key in modalities:
            if key not in STS_FILES:
                raise ValueError(f"unknown sarcoma image {key!r}; choose from {sorted(STS_FILES)}")
            image_file, mask_file, modality = STS_FILES[key]
            image, labels, modality = to_model_grid(root / patient / image_file, root / patient / mask_file,
                                                    spacing, normalization, modality)
            volumes.append(ObjectVolume(f"{patient}/{key}", patient, modality, "tumour", image,
                                        (labels > 0).astype(np.uint16), {1: "tumour"}))
    return volumes


def totalseg_class_names(root: Path) -> dict[int, str]:
    """TotalSegmentator's ``total`` task: label -> class name."""
    table = json.loads((root / "totalsegmentator_class_map.json").read_text())["total"]
    return {int(k): str(v) for k, v in table.items()}


def totalseg_volumes(root: Path, heldout: list[str], spacing: tuple[float, float, float],
                     normalization: dict) -> tuple[list[ObjectVolume], list[np.ndarray]]:
    """TotalSegmentator's example CTs with every class but ``heldout``; also each volume's held-out mask."""
    names = totalseg_class_names(root)
    unknown = sorted(set(heldout) - set(names.values()))
    if unknown:
        raise ValueError(f"held-out classes {unknown} are not TotalSegmentator 'total' classes")
    heldout_ids = [k for k, v in names.items() if v in heldout]
    volumes, excluded = [], []
    for image_file, label_file in TOTALSEG_PAIRS:
        image, labels, modality = to_model_grid(root / image_file, root / label_file, spacing, normalization, "CT")
        out = np.isin(labels, heldout_ids)
        labels[out] = 0
        present = {int(v): names[int(v)] for v in np.unique(labels) if v}
        volumes.append(ObjectVolume(f"totalseg/{image_file}", "totalseg", modality, "organ", image, labels, present))
        excluded.append(out)
    return volumes, excluded


def pseudo_object_labels(image: np.ndarray, rng: np.random.Generator, count: int,
                         excluded: np.ndarray | None = None, min_voxels: int = 100,
                         max_voxels: int = 30000) -> np.ndarray:
    """(K, J, I) uint16 map of up to ``count`` intensity-coherent regions of a normalised image.

    The image is smoothed, cut at random quantiles into 3 to 6 bands, each band opened once and split
    into 6-connected components; components of ``min_voxels`` to ``max_voxels`` that are not at the
    image's floor (air, clipped background) and do not touch ``excluded`` are kept, ``count`` drawn.
    """
    smooth = ndimage.gaussian_filter(image.astype(np.float32), 1.0)
    floor = float(image.min()) + 0.02 * float(max(image.max() - image.min(), 1e-6))
    body = smooth > floor
    if not body.any():
        return np.zeros(image.shape, np.uint16)
    bands = int(rng.integers(3, 7))
    edges = np.quantile(smooth[body], np.sort(rng.uniform(0.05, 0.95, size=bands - 1)))
    banded = np.digitize(smooth, edges)
    banded[~body] = -1
    out = np.zeros(image.shape, np.uint16)
    candidates: list[tuple[int, np.ndarray]] = []
    structure = ndimage.generate_binary_structure(3, 1)
    for band in range(bands):
        region = ndimage.binary_opening(banded == band, structure)
        components, found = ndimage.label(region, structure)
        if not found:
            continue
        sizes = np.bincount(components.ravel(), minlength=found + 1)
        touching = set(np.unique(components[excluded]).tolist()) if excluded is not None else set()
        for label in np.flatnonzero((sizes >= min_voxels) & (sizes <= max_voxels)):
            if label and int(label) not in touching:
                candidates.append((band, components == label))
    for index, choice in enumerate(rng.permutation(len(candidates))[:count]):
        out[candidates[int(choice)][1] & (out == 0)] = index + 1
    return out


def with_pseudo_objects(volumes: list[ObjectVolume], excluded: dict[str, np.ndarray], per_volume: int,
                        seed: int) -> list[ObjectVolume]:
    """One ``pseudo`` volume per input volume (same image), holding its pseudo-objects."""
    rng = np.random.default_rng(seed)
    out = []
    for volume in volumes:
        labels = pseudo_object_labels(volume.image, rng, per_volume, excluded.get(volume.name))
        if labels.any():
            out.append(ObjectVolume(f"{volume.name}#pseudo", volume.group, volume.modality, "pseudo",
                                    volume.image, labels, {int(v): "region" for v in np.unique(labels) if v}))
    return out


def list_objects(volumes: list[ObjectVolume], min_voxels: int = MIN_OBJECT_VOXELS) -> list[TrainingObject]:
    """Every object of at least ``min_voxels`` voxels, with its bounding box."""
    objects = []
    for index, volume in enumerate(volumes):
        boxes = ndimage.find_objects(volume.labels.astype(np.int32))
        sizes = np.bincount(volume.labels.ravel())
        for label, box in enumerate(boxes, start=1):
            if box is None or sizes[label] < min_voxels:
                continue
            low = tuple(int(s.start) for s in box)
            high = tuple(int(s.stop) - 1 for s in box)
            objects.append(TrainingObject(index, label, volume.kind, low, high))  # type: ignore[arg-type]
    return objects


def random_object_voxel(volume: ObjectVolume, obj: TrainingObject, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn voxel (k, j, i) of the object (rejection in its box, then an exact fallback)."""
    low, high = np.asarray(obj.low), np.asarray(obj.high)
    for _ in range(64):
        voxel = low + (rng.random(3) * (high - low + 1)).astype(int)
        if volume.labels[tuple(voxel)] == obj.label:
            return voxel
    box = tuple(slice(a, b + 1) for a, b in zip(obj.low, obj.high, strict=True))
    inside = np.argwhere(volume.labels[box] == obj.label)
    return low + inside[rng.integers(len(inside))]
