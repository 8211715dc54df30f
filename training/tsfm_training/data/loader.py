"""Training batches from the store (``store.py``), built by a torch ``DataLoader`` with worker processes.

Batch ``n`` is a pure function of ``(seed, n, rank)``: element ``b`` draws its case and its patch from a
generator seeded by ``(seed, n, b, rank)``, exactly as ``sampler.PatchBatches`` does. So

- workers build batches ahead of the training step (``prefetch`` each), overlapped with it, and the
  batches are the same whatever the number of workers or their scheduling;
- a resumed run (``state_dict`` holds the step) continues with the batches the killed one would have
  seen;
- each rank (``stream``) draws its own batches.

Each worker opens the stored cases it needs as memory maps and reads only the block it crops; no process
holds the dataset in its memory.

A segmentation element (``SegmentationSample``): foreground with probability ``foreground_ratio``
(class-first, ``foreground.patch_centre``) among the classes the case's pool entry maps to a target,
a block of ``initial_patch_size`` read around the centre (zero outside the volume), labels mapped to the
pool's class ids, then the MONAI augmentations and a centre crop to the patch.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsfm_training.data.datasets import DatasetError
from tsfm_training.data.foreground import patch_centre, read_window
from tsfm_training.data.store import StoredCase


@dataclass(frozen=True)
class CaseRef:
    """A stored case and how its labels enter the pool.

    ``lookup[key]``: the pool class of source key ``key`` (label value, or mask channel number 1..M), 0
    for keys that are not trained on. ``annotated`` (C,) bool: the pool classes the case's dataset
    annotates, for the partial-label losses (None when unused).
    """

    path: Path
    lookup: np.ndarray
    annotated: np.ndarray | None = None


SampleFn = Callable[[StoredCase, CaseRef, np.random.Generator], dict[str, Any]]


@dataclass(frozen=True)
class PatchSettings:
    """``patch_size`` (Z, Y, X) voxels; ``num_classes`` of the pool; ``multi_label``: labels leave as
    (C, Z, Y, X) binary masks (sigmoid models; overlapping masks need it), else as a (1, Z, Y, X) map.
    ``class_first``: a foreground patch picks its class uniformly (nnU-Net), else every foreground voxel
    weighs the same (MONAI's ``RandCropByPosNegLabeld``, SuPreM)."""

    patch_size: tuple[int, int, int]
    foreground_ratio: float = 0.33
    num_classes: int = 1
    multi_label: bool = False
    augmentation: Any = None
    class_first: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1], got {self.foreground_ratio}")


class SegmentationSample:
    """``(case, ref, rng) -> {"image": (C, *patch) float32, "label": (1 or num_classes, *patch)}``."""

    def __init__(self, settings: PatchSettings) -> None:
        from tsfm_training.data.transforms import initial_patch_size

        self.settings = settings
        self.block = initial_patch_size(settings.patch_size, settings.augmentation)
        self._transforms: Any = None  # built in the worker that uses it, not pickled to it

    def transforms(self):
        if self._transforms is None:
            from tsfm_training.data.transforms import patch_augmentation

            self._transforms = patch_augmentation(self.settings.patch_size, self.settings.augmentation) or False
        return self._transforms

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_transforms": None}

    def __call__(self, case: StoredCase, ref: CaseRef, rng: np.random.Generator) -> dict[str, Any]:
        if case.label_kind is None:
            raise DatasetError(f"case {case.case_id!r} has no labels; supervised training needs them")
        locations = case.locations
        eligible = [key for key in locations if key < len(ref.lookup) and ref.lookup[key]]
        foreground = bool(rng.random() < self.settings.foreground_ratio)
        weights = None if self.settings.class_first else case.class_voxels
        centre = patch_centre(locations, eligible, case.shape, rng, foreground, weights)
        image = read_window(case.image, centre, self.block)
        sample = {"image": image, "label": self._target(case, ref, centre)}
        transforms = self.transforms()
        if transforms:
            transforms.set_random_state(seed=int(rng.integers(2**31 - 1)))
            sample = transforms(sample)
        return sample

    def _target(self, case: StoredCase, ref: CaseRef, centre: Sequence[int]) -> np.ndarray:
        num_classes = self.settings.num_classes
        if case.label_kind == "masks":
            if not self.settings.multi_label:
                raise DatasetError(f"case {case.case_id!r} has per-class masks, which may overlap; train it with a "
                                   "sigmoid objective (partial_label or suprem)")
            masks = read_window(case.masks, centre, self.block)
            target = np.zeros((num_classes, *self.block), dtype=np.uint8)
            for channel, mask in enumerate(masks, start=1):
                if channel < len(ref.lookup) and ref.lookup[channel]:
                    target[ref.lookup[channel] - 1] |= mask
            return target
        raw = read_window(case.label[None], centre, self.block)[0]
        if raw.size and int(raw.max()) >= len(ref.lookup):
            raise DatasetError(f"case {case.case_id!r}: label value {int(raw.max())} exceeds its dataset's labels "
                               f"{len(ref.lookup) - 1}")
        mapped = ref.lookup[raw]
        if not self.settings.multi_label:
            return mapped[None]
        classes = np.arange(1, num_classes + 1, dtype=mapped.dtype).reshape(-1, 1, 1, 1)
        return (mapped[None] == classes).astype(np.uint8)


class VolumeFusionSample:
    """Volume Fusion pairs (MIS-FM) from the first channel of a stored case; labels are not used."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def __call__(self, case: StoredCase, ref: CaseRef, rng: np.random.Generator) -> dict[str, Any]:
        from tsfm_training.objectives.volume_fusion import volume_fusion_sample

        return volume_fusion_sample(np.asarray(case.image[0]), self.settings, rng)


class StepBatches(torch.utils.data.Dataset):
    """``dataset[step]``: batch ``step`` of the stream as a dict of tensors (see the module docstring).

    ``image`` (B, C, Z, Y, X) float32, ``label`` (B, 1, Z, Y, X) int64 or (B, C', Z, Y, X) uint8 masks,
    other sample keys as float32, and ``annotated`` (B, C') bool when the refs carry it.
    """

    def __init__(self, refs: Sequence[CaseRef], make_sample: SampleFn, batch_size: int = 2, seed: int = 0,
                 weights: Sequence[float] | None = None, stream: int = 0) -> None:
        if not refs:
            raise ValueError("no training cases to sample from")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.refs = list(refs)
        self.make_sample = make_sample
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.stream = int(stream)
        probabilities = np.full(len(refs), 1.0 / len(refs)) if weights is None else np.asarray(weights, float)
        if probabilities.shape != (len(refs),) or (probabilities < 0).any() or probabilities.sum() <= 0:
            raise ValueError(f"weights must be {len(refs)} non-negative numbers with a positive sum")
        self.probabilities = probabilities / probabilities.sum()
        self._open: dict[int, StoredCase] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}  # memory maps are reopened in each worker

    def case(self, which: int) -> StoredCase:
        if which not in self._open:
            self._open[which] = StoredCase(self.refs[which].path)
        return self._open[which]

    def element(self, step: int, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, index] + ([self.stream] if self.stream else []))
        which = int(rng.choice(len(self.refs), p=self.probabilities))
        sample = self.make_sample(self.case(which), self.refs[which], rng)
        label = _array(sample["label"])
        if np.issubdtype(label.dtype, np.floating):  # spatial transforms return floats; nearest keeps integers
            label = np.rint(label)
        element = {"image": torch.from_numpy(_array(sample["image"]).astype(np.float32, copy=False)),
                   # masks stay one byte per class and voxel (25 classes x 96^3 as int64 would be 177 MB)
                   "label": torch.from_numpy(label.astype(np.uint8 if self._multi_label() else np.int64,
                                                          copy=False))}
        for key, value in sample.items():
            if key not in element:
                element[key] = torch.as_tensor(_array(value), dtype=torch.float32)
        annotated = self.refs[which].annotated
        if annotated is not None:
            element["annotated"] = torch.as_tensor(annotated, dtype=torch.bool)
        return element

    def _multi_label(self) -> bool:
        return isinstance(self.make_sample, SegmentationSample) and self.make_sample.settings.multi_label

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        elements = [self.element(int(step), b) for b in range(self.batch_size)]
        return {key: torch.stack([e[key] for e in elements]) for key in elements[0]}


class _Steps(torch.utils.data.Sampler):
    """Step numbers ``start, start + 1, ...`` without end (the loop decides when to stop)."""

    def __init__(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _seed_worker(worker_id: int) -> None:
    # Samples draw from their own generators; this only pins down any library that uses the globals.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class PatchLoader:
    """The batches of a ``StepBatches``, built by ``workers`` processes (0: in this process).

    Iterating starts at ``step`` (``load_state_dict`` sets it) and counts the batches handed out, so
    ``state_dict()`` is exact whatever the workers have prefetched. ``prefetch`` batches per worker are
    built ahead; ``pin_memory`` speeds the copy to a GPU.
    """

    def __init__(self, dataset: StepBatches, workers: int = 0, prefetch: int = 2, pin_memory: bool = False) -> None:
        if workers < 0 or prefetch < 1:
            raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}")
        self.dataset = dataset
        self.workers = int(workers)
        self.prefetch = int(prefetch)
        self.pin_memory = bool(pin_memory)
        self.step = 0

    @property
    def cases(self) -> list[CaseRef]:
        return self.dataset.refs

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.dataset.seed * 1009 + self.dataset.stream)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=_Steps(self.step), num_workers=self.workers,
            persistent_workers=self.workers > 0, prefetch_factor=self.prefetch if self.workers else None,
            pin_memory=self.pin_memory, worker_init_fn=_seed_worker, generator=generator)
        for batch in loader:
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.dataset.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.dataset.seed)) != self.dataset.seed:
            raise ValueError(f"checkpoint batches were drawn with seed {state['seed']}, this run uses "
                             f"{self.dataset.seed}")
        self.step = int(state["step"])


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "as_tensor"):  # MONAI MetaTensor -> plain tensor
        value = value.as_tensor()
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    return np.ascontiguousarray(value)
