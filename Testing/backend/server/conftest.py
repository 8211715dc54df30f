"""One real server per test module: uvicorn on loopback serving a tiny STU-Net and a tiny click model."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.live_server import TEST_TOKEN as TOKEN
from support.live_server import ThreadedServer, backend_app, module_on_path, save_click_model
from support.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("models")
    stunet = save_tiny_model(root / "tiny-stunet", classes={1: "liver", 2: "spleen"}, spacing=None,
                             patch_size=(16, 64, 64))
    return [stunet, save_click_model(root / "tiny-click")]


@pytest.fixture(scope="module")
def live(model_paths: list[Path]):  # noqa: ANN201 - ThreadedServer with .services
    app, services = backend_app(model_paths, token=TOKEN, max_sessions=3, max_queued_jobs=2,
                                max_request_bytes=16 << 20, max_array_bytes=64 << 20)
    with ThreadedServer(app) as server:
        server.services = services
        yield server


@pytest.fixture
def client(live: ThreadedServer):  # noqa: ANN201
    module_on_path()
    from TSFMSegmentationLib.client import BackendClient

    client = BackendClient(live.url, token=TOKEN)
    yield client
    client.close()
