"""Shared fixtures: where the real data lives, an isolated model store, and marker handling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tsfm_backend.shared_data import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.fail(f"real test data not found at {path}; set TSFM_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def small_ct(shared_data: Path):  # noqa: ANN201
    """Real abdominal CT, 122 x 101 x 30 voxels at 3 mm, int16 HU: (array KJI, spacing, origin, direction)."""
    from support.live_server import read_ct

    return read_ct(shared_data / "totalseg" / "example_ct_sm.nii.gz")


@pytest.fixture(autouse=True)
def isolated_model_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own $TSFM_HOME so nothing touches the user's ~/.tsfm."""
    home = tmp_path_factory.mktemp("tsfm_home")
    monkeypatch.setenv("TSFM_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def downloadable_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real model folder (``MODEL_FILES``) for the download tests to serve."""
    from support.tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("source") / "tiny-stunet", spacing=None, patch_size=(16, 32, 32))


@pytest.fixture
def files(tmp_path: Path, downloadable_model: Path):  # noqa: ANN201 - support.file_server.FileServer
    """A loopback file server holding ``downloadable_model``'s files."""
    from support.file_server import MODEL_FILES, serve_files

    with serve_files(tmp_path / "www", downloadable_model, MODEL_FILES) as server:
        yield server


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slicer = pytest.mark.skip(reason="needs the slicer-core wheel")
    has_cuda = _cuda_available() if any("gpu" in item.keywords for item in items) else False
    has_slicer = importlib.util.find_spec("slicer") is not None
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slicer" in item.keywords and not has_slicer:
            item.add_marker(skip_slicer)
