"""Fixtures of the module suites: a fresh headless Slicer scene per test and real CT volumes in it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
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


ORGAN_CLASSES = {1: "liver", 2: "spleen", 3: "kidney_left"}


@pytest.fixture(scope="session")
def local_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One real ``tsfm-backend serve`` for the module suites, started by the module's own launcher.

    It serves a tiny automatic model ("tiny-organs") and a tiny promptable one ("tiny-click"), both
    with random weights for plumbing and geometry tests, and the bundled click model
    ("sts-click-small") and the default ("universal-click-small") for the accuracy checks.
    """
    from support.live_server import save_click_model
    from support.tiny_models import save_tiny_model

    mini_slicer.install_stand_ins()
    from TSFMSegmentationLib.backend_process import LocalBackend

    home = tmp_path_factory.mktemp("served_home")
    save_tiny_model(home / "models" / "tiny-organs", model_id="tiny-organs", classes=ORGAN_CLASSES,
                    spacing=(3.0, 3.0, 3.0))
    save_click_model(home / "models" / "tiny-click", model_id="tiny-click")
    backend = LocalBackend(python=sys.executable, device="cpu", extra_args=["--models", "tiny-organs", "tiny-click", "sts-click-small",
                                                                          "universal-click-small"],
                           env={"TSFM_HOME": str(home), "OMP_NUM_THREADS": "1"})
    backend.start(timeout_s=120)
    yield backend
    backend.stop()
    assert not backend.is_running()


@pytest.fixture
def logic(mini, local_backend):  # noqa: ANN001, ANN201
    """The module's Logic connected to the suite's server (loopback: no upload confirmation)."""
    from TSFMSegmentation import TSFMSegmentationLogic

    logic = TSFMSegmentationLogic()
    logic.connectRemote(local_backend.url)
    yield logic
    if logic.editor is not None:
        logic.editor.close()
    logic.connection.client.close()
