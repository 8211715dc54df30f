"""``GET /v1/models`` says which models take clicks: promptable ones and VISTA3D (automatic), not the others,
and a session opens exactly for those."""

from __future__ import annotations

import pytest
import requests
import torch
from support.live_server import TEST_TOKEN, ThreadedServer, backend_app, save_click_model
from support.tiny_models import save_tiny_model
from tsfm_backend.checkpoints import save_model
from tsfm_backend.formats import vista3d as vista3d_format
from tsfm_backend.models import vista3d

HEADERS = {"Authorization": f"Bearer {TEST_TOKEN}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - ThreadedServer
    root = tmp_path_factory.mktemp("models")
    card = vista3d_format.card_for("tiny-vista3d", {"preset": "tiny", "class_prompts": [1, 3]}, "random weights")
    card.patch_size, card.spacing = (32, 32, 32), (3.0, 3.0, 3.0)
    card.validate()
    torch.manual_seed(0)
    folders = [save_model(vista3d.build(preset="tiny", class_prompts=[1, 3]), card, root / "tiny-vista3d"),
               save_tiny_model(root / "tiny-stunet", classes={1: "liver"}, spacing=None),
               save_click_model(root / "tiny-click")]
    app, _ = backend_app(folders, token=TEST_TOKEN)
    with ThreadedServer(app) as server:
        yield server


def test_model_infos_say_which_models_serve_clicks(live, small_ct):  # noqa: ANN001
    answer = requests.get(live.url + "/v1/models", headers=HEADERS, timeout=30)
    assert answer.status_code == 200
    infos = {info["id"]: info for info in answer.json()}
    assert {model: (info["kind"], info["serves_clicks"]) for model, info in infos.items()} == {
        "tiny-vista3d": ("automatic", True), "tiny-stunet": ("automatic", False), "tiny-click": ("promptable", True)}

    from support.live_server import module_on_path

    module_on_path()
    from TSFMSegmentationLib.client import BackendClient, BackendError

    array, spacing, origin, direction = small_ct
    client = BackendClient(live.url, token=TEST_TOKEN)
    try:
        image_id = client.upload_image(array, spacing, origin, direction)
        for model, info in infos.items():
            if info["serves_clicks"]:
                client.close_session(client.create_session(image_id, model))
            else:
                with pytest.raises(BackendError, match="submit a job"):
                    client.create_session(image_id, model)
    finally:
        client.close()


def test_the_model_info_field_is_documented_in_the_openapi_schema(live):  # noqa: ANN001
    schema = requests.get(live.url + "/v1/openapi.json", headers=HEADERS, timeout=30).json()
    field = schema["components"]["schemas"]["ModelInfo"]["properties"]["serves_clicks"]
    assert field["type"] == "boolean" and "sessions" in field["description"]
