"""A real server on loopback serving a tiny click model, a real sarcoma CT, and the engine in-process to compare with.

The tiny click U-Net has random weights: its masks mean nothing, but they are deterministic, so the
masks the protocol returns must equal, voxel for voxel, those of our engine run here on the same prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support.live_server import TEST_TOKEN, ThreadedServer, backend_app, read_ct, save_click_model

MAX_SESSIONS = 2


class ManualClock:
    """Monotonic seconds that move only when a test says so (lease expiry without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def click_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_click_model(tmp_path_factory.mktemp("models") / "tiny-click")


@pytest.fixture(scope="module")
def sarcoma_ct(shared_data: Path):  # noqa: ANN201 - (array KJI float32, spacing KJI mm)
    """Held-out patient STS_005's CT (79 x 199 x 162 voxels), as SlicerNNInteractive sends it."""
    array, spacing, _, _ = read_ct(shared_data / "sts" / "STS_005" / "ct.nii.gz")
    return np.ascontiguousarray(array, dtype=np.float32), tuple(float(s) for s in spacing[::-1])


@pytest.fixture(scope="module")
def live(click_model: Path):  # noqa: ANN201 - ThreadedServer with .services, .clock and .url_nni
    app, services = backend_app([click_model], token=TEST_TOKEN, max_sessions=MAX_SESSIONS,
                                max_request_bytes=16 << 20, max_array_bytes=64 << 20)
    clock = ManualClock()
    services.sessions.clock = clock
    with ThreadedServer(app) as server:
        server.services, server.clock = services, clock
        server.url_nni = server.url + "/nninteractive"
        yield server


@pytest.fixture
def remote(live: ThreadedServer):  # noqa: ANN201 - nnInteractiveRemoteInferenceSession
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    session = nnInteractiveRemoteInferenceSession(live.url_nni, api_key=TEST_TOKEN)
    yield session
    session.close()


@pytest.fixture
def reference(click_model: Path, sarcoma_ct, live: ThreadedServer):  # noqa: ANN001, ANN201 - InteractiveSession
    """Our engine in this process on the same image, model and undo depth as the server's leases."""
    from tsfm_backend.checkpoints import load_model
    from tsfm_backend.inference.interactive import InteractiveSession
    from tsfm_backend.volume import Volume

    array, spacing_kji = sarcoma_ct
    return InteractiveSession(load_model(click_model, device="cpu"), Volume(array, spacing_kji[::-1]), device="cpu",
                              max_undo_steps=live.services.settings.max_undo_steps)
