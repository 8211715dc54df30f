"""Stored outputs of the seed authors' own code (``Testing/backend/reference_outputs``) and their scripts.

Each ``make_*_reference.py`` there ran the authors' code in an environment of its own and wrote a small
``.npz``; its constants (configuration, input, weight formula) are what a test rebuilds our side from.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

# Float32 sums run in another order on other CPUs (their AVX-512 / AMX kernels): up to 4e-5 apart on outputs
# of magnitude 8. A changed weight moves them by more than 1e-3.
FLOAT32_ATOL = 1e-4

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "backend" / "reference_outputs"


def load_script(name: str) -> ModuleType:
    """The generating script ``REFERENCE_DIR/<name>.py`` as a module (its constants and helpers)."""
    spec = importlib.util.spec_from_file_location(name, REFERENCE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_outputs(path: Path) -> dict[str, np.ndarray]:
    """Every array of a stored ``.npz`` (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@contextlib.contextmanager
def nudged(weight: torch.Tensor, index: tuple[int, ...], delta: float = 0.05) -> Iterator[None]:
    """``weight[index]`` raised by ``delta`` inside the block, put back after (a test that a matching
    output depends on the weights, so the match can fail)."""
    with torch.no_grad():
        weight[index] += delta
        try:
            yield
        finally:
            weight[index] -= delta
