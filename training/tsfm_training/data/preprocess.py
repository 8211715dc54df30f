"""Preprocessing a case onto the network grid exactly as the backend does at inference, with a disk cache.

Training must see what inference will feed the network, so the steps are the backend's own
(``tsfm_backend.preprocessing``): reorient by the card's axis order, normalise by its scheme and resample
linearly to its spacing (in the order its normalisation gives); labels follow by nearest neighbour with
the same voxel-centre convention.
Results are cached as ``.npy`` files (no pickle) keyed by the source files' size and modification time
and the preprocessing settings, so a second run or a second recipe skips the work.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsfm_training.data.datasets import Case, DatasetError


@dataclass(frozen=True)
class Preprocessing:
    """The card fields that decide the network grid: ``spacing`` (Z, Y, X) mm or None, axis order, normalisation."""

    spacing: tuple[float, float, float] | None
    axis_order: str
    normalization: dict[str, Any]

    @classmethod
    def from_card(cls, card) -> Preprocessing:
        return cls(card.spacing, card.axis_order, dict(card.normalization))

    def key(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedCase:
    """``image`` (C, Z, Y, X) float32 and ``label`` (Z, Y, X) uint8/uint16 or None, on the network grid.

    ``masks`` (M, Z, Y, X) uint8 {0, 1}: the case's per-class masks (``Case.masks``), when it has them.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    masks: np.ndarray | None = None


def prepare_case(case: Case, settings: Preprocessing) -> PreparedCase:
    """Read the case's files and bring them to the network grid (see module docstring)."""
    import torch
    from tsfm_backend.grid_alignment import GridMismatchError, labels_on_image_grid
    from tsfm_backend.image_io import read_volume
    from tsfm_backend.preprocessing import (
        nearest_source_indices,
        network_shape_for,
        normalize_and_resample,
        orientation,
        reorient,
    )

    volumes = [read_volume(path) for path in case.images]
    reference = volumes[0]
    for path, volume in zip(case.images[1:], volumes[1:], strict=True):
        if volume.shape != reference.shape:
            raise DatasetError(f"case {case.case_id!r}: channel {path} has shape {volume.shape}, "
                               f"first channel {reference.shape}")
    permutation, flips = orientation(reference, settings.axis_order)
    spacing = tuple(reference.spacing_kji[a] for a in permutation)
    source_shape = tuple(reorient(reference.array, permutation, flips).shape)
    shape = network_shape_for(source_shape, spacing, settings.spacing)
    channels = []
    for volume in volumes:
        source = torch.from_numpy(np.ascontiguousarray(reorient(volume.array, permutation, flips), dtype=np.float32))
        channels.append(normalize_and_resample(source[None], settings.normalization, shape)[0])
    image = torch.stack(channels).numpy().astype(np.float32)
    actual_spacing = tuple(float(n * s / m) for n, s, m in zip(source_shape, spacing, shape, strict=True))

    def on_grid(path: Path) -> np.ndarray:
        # Labels and masks follow the image by nearest neighbour, with the same voxel-centre convention.
        try:
            values = labels_on_image_grid(read_volume(path), reference, f"label {path}")
        except GridMismatchError as error:
            raise DatasetError(f"case {case.case_id!r}: {error}") from error
        if not np.issubdtype(values.dtype, np.integer):
            if not np.array_equal(values, np.round(values)):
                raise DatasetError(f"case {case.case_id!r}: label {path} holds non-integer values")
        if values.min() < 0 or values.max() > np.iinfo(np.uint16).max:
            raise DatasetError(f"case {case.case_id!r}: label values must be in [0, 65535]")
        dtype = np.uint8 if values.max() <= 255 else np.uint16
        oriented = reorient(values.astype(dtype), permutation, flips)
        index = [nearest_source_indices(m, n) for m, n in zip(shape, oriented.shape, strict=True)]
        return np.ascontiguousarray(oriented[np.ix_(*index)])

    label = on_grid(case.label) if case.label is not None else None
    masks = np.stack([(on_grid(path) > 0).astype(np.uint8) for path in case.masks]) if case.masks else None
    return PreparedCase(case.case_id, np.ascontiguousarray(image), label, actual_spacing,  # type: ignore[arg-type]
                        masks)


class CaseCache:
    """``prepare_case`` results stored under ``folder`` as ``<key>.image.npy`` / ``.label.npy`` / ``.json``."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder else None

    def key(self, case: Case, settings: Preprocessing) -> str:
        files = [case.label, *case.images] if case.label is not None else list(case.images)
        stamp = [(str(Path(p).resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        text = json.dumps({"files": stamp, "settings": settings.key()}, sort_keys=True, default=str)
        return f"{case.case_id}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def get(self, case: Case, settings: Preprocessing) -> PreparedCase:
        if self.folder is None:
            return prepare_case(case, settings)
        stem = self.folder / self.key(case, settings)
        meta_path = stem.with_suffix(".json")
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            image = np.load(stem.with_suffix(".image.npy"), allow_pickle=False)
            label = np.load(stem.with_suffix(".label.npy"), allow_pickle=False) if meta["has_label"] else None
            return PreparedCase(case.case_id, image, label, tuple(meta["spacing"]))  # type: ignore[arg-type]
        prepared = prepare_case(case, settings)
        self.folder.mkdir(parents=True, exist_ok=True)
        _save_atomic(stem.with_suffix(".image.npy"), prepared.image)
        if prepared.label is not None:
            _save_atomic(stem.with_suffix(".label.npy"), prepared.label)
        # The JSON is written last: its presence marks a complete entry.
        tmp = meta_path.with_name(meta_path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"case_id": case.case_id, "spacing": prepared.spacing,
                                   "has_label": prepared.label is not None}))
        os.replace(tmp, meta_path)
        return prepared


def prepare_training_cases(data: dict[str, Any], preprocessing: Preprocessing,
                           default_cache: Path) -> list[PreparedCase]:
    """The cases of a config's ``data`` section, minus its ``validation`` ids, preprocessed (cached).

    ``data`` keys: ``datasets`` (dataset configs), ``validation`` (case ids held out), ``max_cases``
    (a cap on the whole list) and ``cache`` (folder; ``default_cache`` when absent).
    """
    from tsfm_training.config import ConfigError
    from tsfm_training.data.datasets import dataset_from_config

    held_out = set(data.get("validation", []))
    cases = [c for entry in data.get("datasets", []) for c in dataset_from_config(entry).cases
             if c.case_id not in held_out]
    if data.get("max_cases"):
        cases = cases[: int(data["max_cases"])]
    if not cases:
        raise ConfigError("config 'data.datasets' gives no training case once 'data.validation' is left out")
    cache = CaseCache(data.get("cache", default_cache))
    return [cache.get(case, preprocessing) for case in cases]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)
