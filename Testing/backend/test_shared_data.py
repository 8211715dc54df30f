"""Finding the shared data folder: beside the checkout, beside the checkout it was cloned from, or as set."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tsfm_backend.shared_data import shared_data_dir


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.delenv("TSFM_SHARED_DATA", raising=False)
    origin = tmp_path / "work" / "main"
    origin.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    data = tmp_path / "work" / "shared" / "data"
    data.mkdir(parents=True)
    clone = tmp_path / "elsewhere" / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, capture_output=True)
    return {"origin": origin, "data": data, "clone": clone}


def test_beside_the_checkout_then_beside_its_origin(layout):
    assert shared_data_dir(layout["origin"]) == layout["data"]
    assert shared_data_dir(layout["clone"]) == layout["data"]
    beside_clone = layout["clone"].parent / "shared" / "data"  # ../shared/data of the clone wins once it exists
    beside_clone.mkdir(parents=True)
    assert shared_data_dir(layout["clone"]) == beside_clone


def test_the_environment_wins_and_a_missing_folder_is_named_beside_the_checkout(layout, tmp_path, monkeypatch):
    monkeypatch.setenv("TSFM_SHARED_DATA", str(tmp_path / "custom"))
    assert shared_data_dir(layout["clone"]) == tmp_path / "custom"
    monkeypatch.delenv("TSFM_SHARED_DATA")
    lone = tmp_path / "lone" / "repo"
    lone.mkdir(parents=True)  # not a git checkout at all
    assert shared_data_dir(lone) == tmp_path / "lone" / "shared" / "data"
