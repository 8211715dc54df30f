"""Preprocess once, to memory-mapped files: the training store shared by every rank and worker.

Holding every preprocessed case in each rank's RAM costs 60 to 75 GB per rank on TotalSegmentator; this
store writes each case once, as nnU-Net does, and training processes read only the patches they crop.

Layout of ``folder`` (one sub-folder per case, named ``<dataset>/<case id>-<fingerprint>``)::

    image.npy        (C, Z, Y, X) float32, on the network grid (``prepare_case``: the backend's own steps)
    label.npy        (Z, Y, X) uint8/uint16 label map, or
    masks.npy        (M, Z, Y, X) uint8 per-class binary masks (may overlap)
    locations.npz    ``c<key>``: flat indices of voxels of class ``key`` (``foreground.py``; nnU-Net's subset)
    properties.json  case id, dataset, shape, spacing, label kind, voxels per class present, fingerprint

``.npy`` files are opened with ``mmap_mode="r"``: pages come from the OS page cache, shared by all
processes of the machine, and a patch costs its own bytes. (Compressed blosc2 chunks were measured
against this in ``Testing/bench/bench_training_data.py``; see the training README for the figures.)

The fingerprint hashes the source files (path, size, modification time), the preprocessing settings and
the store version: a case is reused while they are unchanged and rewritten under a new name otherwise.
A case is written into a temporary folder and renamed into place, so a killed writer leaves no
half-written case. Under ``torchrun`` only rank 0 writes; the other ranks wait for every case to appear,
then all meet at a barrier. Stale entries (old fingerprints) are never deleted automatically, since
another run may still read them; delete the folder to reclaim the space.

For mask cases the location keys are channel numbers 1..M (channel m holds the m-th class value of its
dataset in ascending order); for label maps they are the label values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tsfm_training.data.datasets import Case, DatasetError
from tsfm_training.data.foreground import MAX_SAMPLES, MIN_FRACTION, label_map_locations, mask_locations
from tsfm_training.data.preprocess import Preprocessing, prepare_case

log = logging.getLogger(__name__)

STORE_VERSION = 1
PROPERTIES = "properties.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def case_fingerprint(case: Case, settings: Preprocessing) -> str:
    """Hex digest of what decides a stored case: source files, preprocessing settings, store version."""
    files = [*case.images, *([case.label] if case.label is not None else []), *case.masks]
    try:
        stamp = [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in files]
    except FileNotFoundError as error:
        raise DatasetError(f"case {case.case_id!r}: {error.filename} is missing") from error
    text = json.dumps({"files": stamp, "settings": settings.key(), "version": STORE_VERSION,
                       "locations": [MAX_SAMPLES, MIN_FRACTION]}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def case_path(folder: Path, case: Case, fingerprint: str) -> Path:
    """Where ``case`` is stored: keyed by dataset and case id, so equal ids of two datasets stay apart."""
    return Path(folder) / _UNSAFE.sub("_", case.dataset) / f"{_UNSAFE.sub('_', case.case_id)}-{fingerprint[:16]}"


def is_complete(path: Path) -> bool:
    return (path / PROPERTIES).is_file()


def write_case(folder: Path, case: Case, settings: Preprocessing) -> Path:
    """Preprocess ``case`` and store it (see the module docstring); a complete entry is reused as it is."""
    fingerprint = case_fingerprint(case, settings)
    target = case_path(folder, case, fingerprint)
    if is_complete(target):
        return target
    prepared = prepare_case(case, settings)
    rng = np.random.default_rng(int(fingerprint[:15], 16))  # the same locations on every rewrite
    tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "image.npy", prepared.image.astype(np.float32, copy=False), allow_pickle=False)
    if prepared.masks is not None:
        kind = "masks"
        np.save(tmp / "masks.npy", prepared.masks, allow_pickle=False)
        locations = mask_locations(prepared.masks, range(1, len(prepared.masks) + 1), rng)
        counts = {m + 1: int(np.count_nonzero(mask)) for m, mask in enumerate(prepared.masks)}
    elif prepared.label is not None:
        kind = "map"
        np.save(tmp / "label.npy", prepared.label, allow_pickle=False)
        locations = label_map_locations(prepared.label, rng)
        counts = dict(enumerate(np.bincount(prepared.label.reshape(-1)).tolist()))
    else:
        kind, locations, counts = None, {}, {}
    np.savez(tmp / "locations.npz", **{f"c{key}": value for key, value in locations.items()})
    properties = {
        "version": STORE_VERSION, "case_id": case.case_id, "dataset": case.dataset, "fingerprint": fingerprint,
        "shape": list(prepared.image.shape[1:]), "channels": int(prepared.image.shape[0]),
        "spacing": list(prepared.spacing), "label": kind,
        "class_voxels": {str(key): int(counts[key]) for key in locations},
        "source": [str(p) for p in (*case.images, *([case.label] if case.label else []), *case.masks)],
    }
    (tmp / PROPERTIES).write_text(json.dumps(properties, indent=1))
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process stored the same case first; its copy is identical.
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_complete(target):
            raise
    return target


def _write_one(arguments: tuple[Path, Case, Preprocessing]) -> Path:
    return write_case(*arguments)


def ensure_store(cases: Sequence[Case], settings: Preprocessing, folder: str | Path, rank: int = 0,
                 workers: int = 0, poll_seconds: float = 2.0) -> list[Path]:
    """The stored folder of every case, writing the missing ones (rank 0 only; ``workers`` processes).

    Other ranks poll until rank 0 has written every case, then all ranks meet at a barrier when a
    process group is up. Polling instead of a long barrier: preprocessing thousands of cases can
    outlast a collective's timeout.
    """
    folder = Path(folder)
    paths = [case_path(folder, case, case_fingerprint(case, settings)) for case in cases]
    missing = [(case, path) for case, path in zip(cases, paths, strict=True) if not is_complete(path)]
    if rank == 0 and missing:
        log.info("preprocessing %d of %d cases into %s", len(missing), len(cases), folder)
        jobs = [(folder, case, settings) for case, _ in missing]
        if workers > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the workers run torch, which must not inherit a forked parent's thread pools.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(_write_one, jobs))
        else:
            for job in jobs:
                _write_one(job)
    elif missing:
        log.info("rank %d waits for rank 0 to preprocess %d cases", rank, len(missing))
        while not all(is_complete(path) for _, path in missing):
            time.sleep(poll_seconds)
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return paths


class _Locations(Mapping[int, np.ndarray]):
    """Class key -> flat indices, read member by member from ``locations.npz`` (one class per patch)."""

    def __init__(self, path: Path, keys: Sequence[int]) -> None:
        self.path = path
        self.keys_ = tuple(int(k) for k in keys)

    def __getitem__(self, key: int) -> np.ndarray:
        if int(key) not in self.keys_:
            raise KeyError(key)
        with np.load(self.path, allow_pickle=False) as archive:
            return archive[f"c{int(key)}"]

    def __contains__(self, key: object) -> bool:  # Mapping's default would read the member
        return key in self.keys_

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys_)

    def __len__(self) -> int:
        return len(self.keys_)


class StoredCase:
    """A stored case opened for reading: arrays memory-mapped on first use, nothing loaded up front.

    ``image`` (C, Z, Y, X) float32; ``label`` (Z, Y, X) or None; ``masks`` (M, Z, Y, X) or None;
    ``locations``: class key -> flat voxel indices, read lazily.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.properties: dict[str, Any] = json.loads((self.path / PROPERTIES).read_text())
        except FileNotFoundError as error:
            raise DatasetError(f"{self.path}: not a complete stored case (no {PROPERTIES})") from error
        self._arrays: dict[str, np.ndarray] = {}

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        return self._arrays[name]

    @property
    def case_id(self) -> str:
        return str(self.properties["case_id"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.properties["shape"])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.properties["spacing"])  # type: ignore[return-value]

    @property
    def label_kind(self) -> str | None:
        return self.properties["label"]

    @property
    def image(self) -> np.ndarray:
        return self._array("image")

    @property
    def label(self) -> np.ndarray | None:
        return self._array("label") if self.label_kind == "map" else None

    @property
    def masks(self) -> np.ndarray | None:
        return self._array("masks") if self.label_kind == "masks" else None

    @property
    def class_voxels(self) -> dict[int, int]:
        """Voxels of each class present (all of them, not only the stored locations)."""
        return {int(k): int(v) for k, v in self.properties["class_voxels"].items()}

    @property
    def locations(self) -> Mapping[int, np.ndarray]:
        return _Locations(self.path / "locations.npz", [int(k) for k in self.properties["class_voxels"]])
