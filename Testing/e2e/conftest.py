"""End-to-end fixtures: the module's client against a real backend on loopback, real CT, tiny real models."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.live_server import ThreadedServer, backend_app, module_on_path, save_click_model
from support.tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny-stunet": save_tiny_model(root / "tiny-stunet", classes={1: "liver", 2: "spleen"}, spacing=None,
                                       patch_size=(16, 64, 64)),
        "tiny-click": save_click_model(root / "tiny-click"),
    }


@pytest.fixture(scope="module")
def live(model_paths: dict[str, Path]):  # noqa: ANN201 - ThreadedServer with .services
    app, services = backend_app(list(model_paths.values()), max_sessions=8)
    with ThreadedServer(app) as server:
        server.services = services
        yield server


@pytest.fixture(scope="session")
def client_module():  # noqa: ANN201
    module_on_path()
    from TSFMSegmentationLib import client

    return client
