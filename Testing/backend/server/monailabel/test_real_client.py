"""MONAI Label's own Slicer-plugin client (``MONAILabelLib/client.py``) against our server.

The client is not part of this project: put the file from Project-MONAI/MONAILabel
(``plugins/slicer/MONAILabel/MONAILabelLib/client.py``) at ``$MONAILABEL_CLIENT`` or
``/tmp/monailabel-client/client.py`` to run this module; it needs only ``requests`` and the standard
library (``cgi``: Python 3.12 or older). Without it the module is skipped; the replayed requests of
``test_plugin_workflow.py`` cover the same ground.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support.live_server import TEST_TOKEN

CLIENT_FILE = Path(os.environ.get("MONAILABEL_CLIENT", "/tmp/monailabel-client/client.py"))
if not CLIENT_FILE.is_file():
    pytest.skip(f"MONAI Label's client file is not at {CLIENT_FILE}", allow_module_level=True)


@pytest.fixture(scope="module")
def client_module():  # noqa: ANN201 - the loaded client.py module
    spec = importlib.util.spec_from_file_location("monailabel_plugin_client", CLIENT_FILE)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its cgi import
        spec.loader.exec_module(module)
    return module


def test_the_plugin_client_logs_in_uploads_segments_and_clicks(client_module, live, uploaded_ct: Path,
                                                              tmp_path: Path) -> None:  # noqa: ANN001
    url = live.url + "/monailabel/"
    anonymous = client_module.MONAILabelClient(url, tmpdir=str(tmp_path), client_id="user-xyz")
    assert anonymous.auth_enabled()
    with pytest.raises(client_module.MONAILabelClientException):
        anonymous.info()
    token = anonymous.auth_token("user-xyz", TEST_TOKEN)

    def client():  # noqa: ANN202 - as the plugin's logic does: a new client for every call, token set
        fresh = client_module.MONAILabelClient(url, tmpdir=str(tmp_path), client_id="user-xyz")
        assert fresh.auth_enabled()
        fresh.update_auth(token)
        assert fresh.auth_valid_token()
        return fresh

    info = client().info()
    assert info["models"]["tiny-stunet"]["type"] == "segmentation" and info["models"]["tiny-click"]["type"] == "deepgrow"

    assert client().upload_image(str(uploaded_ct), "STS_001 ct") == {"image": "STS_001 ct"}
    result_file, params = client().infer("tiny-stunet", "STS_001 ct", {"result_extension": ".nrrd",
                                                                        "result_dtype": "uint8"})
    assert params["label_names"] == {"liver": 1, "spleen": 2}
    labels = sitk.ReadImage(result_file)
    image = sitk.ReadImage(str(uploaded_ct))
    assert labels.GetSize() == image.GetSize() and np.allclose(labels.GetDirection(), image.GetDirection())

    session_id = client().create_session(str(uploaded_ct))["session_id"]
    assert client().get_session(session_id)["name"] == session_id
    size = image.GetSize()
    point = [size[0] // 2, size[1] // 2, size[2] // 2]
    result_file, params = client().infer("tiny-click", "STS_001 ct", {
        "label": "tumour", "foreground": [point], "background": [], "result_extension": ".nrrd",
        "result_dtype": "uint8"}, session_id=session_id)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(result_file))
    assert params["label_names"] == {"tumour": 1} and mask.shape == image.GetSize()[::-1] and mask.any()

    client().remove_session(session_id)
    with pytest.raises(client_module.MONAILabelClientException) as gone:
        client().get_session(session_id)
    assert gone.value.status_code == 404
