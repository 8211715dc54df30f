"""Fixtures of the module suites: a fresh headless Slicer scene per test and real CT volumes in it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import mini_slicer


@pytest.fixture
def mini() -> mini_slicer.MiniSlicer:
    """A new MRML scene with Slicer's module logics, installed as ``slicer.mrmlScene``."""
    pytest.importorskip("slicer")
    return mini_slicer.start()


@pytest.fixture
def small_ct_path(shared_data: Path) -> Path:
    """A real abdominal CT, 122 x 101 x 30 voxels at 3 mm (int16 HU)."""
    return shared_data / "totalseg" / "example_ct_sm.nii.gz"


@pytest.fixture
def ct_node(mini: mini_slicer.MiniSlicer, small_ct_path: Path):  # noqa: ANN201
    return mini_slicer.load_volume(small_ct_path, "CT")
