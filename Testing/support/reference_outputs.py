"""Stored outputs of the seed authors' own code (``Testing/backend/reference_outputs``) and their scripts.

Each ``make_*_reference.py`` there ran the authors' code in an environment of its own and wrote a small
``.npz``; its constants (configuration, input, weight formula) are what a test rebuilds our side from.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

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
