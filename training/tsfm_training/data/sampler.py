"""Endless, replayable streams of training batches drawn from preprocessed cases.

Each batch element draws its case (by the sampling weights) and its patch from a generator seeded by
``(seed, step, element)``, so batch ``n`` is the same whatever happened before: the loop stores only the
step (``state_dict``) and a resumed run continues with exactly the batches the killed one would have
seen. Workers are not needed for the small patches used here; the CPU cost is the augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from tsfm_training.data.preprocess import PreparedCase

SampleFn = Callable[[PreparedCase, np.random.Generator], dict[str, Any]]


class PatchBatches:
    """Iterator of ``{"image": (B, C, Z, Y, X) float32, "label": (B, 1, Z, Y, X) int64[, "annotated": (B, C')]}``.

    ``make_sample(case, rng)`` returns one element's ``image`` (C, Z, Y, X) and ``label`` (1, Z, Y, X);
    ``annotated`` per case (bool vectors) is added when given, for the partial-label loss. ``stream``
    separates the draws of distributed ranks (pass the rank).
    """

    def __init__(self, cases: Sequence[PreparedCase], make_sample: SampleFn, batch_size: int = 2, seed: int = 0,
                 weights: Sequence[float] | None = None, annotated: Sequence[np.ndarray] | None = None,
                 stream: int = 0) -> None:
        if not cases:
            raise ValueError("no training cases to sample from")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cases = list(cases)
        self.make_sample = make_sample
        self.batch_size = batch_size
        self.seed = int(seed)
        probabilities = np.full(len(cases), 1.0 / len(cases)) if weights is None else np.asarray(weights, float)
        if probabilities.shape != (len(cases),) or (probabilities < 0).any() or probabilities.sum() <= 0:
            raise ValueError(f"weights must be {len(cases)} non-negative numbers with a positive sum")
        self.probabilities = probabilities / probabilities.sum()
        self.annotated = list(annotated) if annotated is not None else None
        self.stream = int(stream)
        self.step = 0

    def __iter__(self) -> PatchBatches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        elements = [self.element(self.step, b) for b in range(self.batch_size)]
        self.step += 1
        batch = {key: torch.stack([e[key] for e in elements]) for key in elements[0]}
        return batch

    def element(self, step: int, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, index] + ([self.stream] if self.stream else []))
        which = int(rng.choice(len(self.cases), p=self.probabilities))
        sample = self.make_sample(self.cases[which], rng)
        element = {"image": _tensor(sample["image"], torch.float32), "label": _tensor(sample["label"], torch.int64)}
        for key, value in sample.items():  # prompts and other per-sample inputs travel as float tensors
            if key not in element:
                element[key] = _tensor(value, torch.float32)
        if self.annotated is not None:
            element["annotated"] = torch.as_tensor(self.annotated[which], dtype=torch.bool)
        return element

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"checkpoint batches were drawn with seed {state['seed']}, this run uses {self.seed}")
        self.step = int(state["step"])


def _tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    if hasattr(value, "as_tensor"):  # MONAI MetaTensor -> plain tensor
        value = value.as_tensor()
    return torch.as_tensor(np.ascontiguousarray(value) if isinstance(value, np.ndarray) else value).to(dtype)


def patch_sample_fn(transforms) -> SampleFn:
    """Sampling through a MONAI ``Compose`` (``training_transforms``), reseeded from ``rng`` per element."""

    def make_sample(case: PreparedCase, rng: np.random.Generator) -> dict[str, Any]:
        if case.label is None:
            raise ValueError(f"case {case.case_id!r} has no label map; supervised training needs one")
        transforms.set_random_state(seed=int(rng.integers(2**31 - 1)))
        result = transforms({"image": case.image, "label": case.label[None]})
        return result[0] if isinstance(result, list) else result

    return make_sample


def volume_fusion_sample_fn(settings) -> SampleFn:
    """Volume Fusion pairs from the first channel of each case (labels, if any, are ignored)."""
    from tsfm_training.objectives.volume_fusion import volume_fusion_sample

    def make_sample(case: PreparedCase, rng: np.random.Generator) -> dict[str, Any]:
        return volume_fusion_sample(case.image[0], settings, rng)

    return make_sample
