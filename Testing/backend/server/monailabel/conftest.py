"""MONAI Label's Slicer plugin replayed against a real server: the requests its client sends, byte for byte
in form and fields, and its way of reading the answers.

``PluginCalls`` sends what ``MONAILabelLib/client.py`` (MONAI Label's Slicer plugin) sends, with
``requests``: the same paths under the server address the user typed, the same methods and query
parameters, multipart bodies laid out as the plugin lays them out (its fixed boundary, fields before
files, the file's full path as its name) and the ``params`` the plugin's logic adds
(``result_extension``, ``result_dtype``, ``client_id``). Answers are read as the plugin reads them:
form answers with ``cgi.FieldStorage``, files by file name, ``params`` as JSON text.
"""

from __future__ import annotations

import io
import json
import mimetypes
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus as quote

import pytest
import requests
from support.live_server import TEST_TOKEN, save_click_model
from support.tiny_models import save_tiny_model

PLUGIN_BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"  # the plugin's fixed multipart boundary
CLIENT_ID = "user-xyz"  # the plugin's default client id
# The classes of the automatic test model, with a gap the answer must renumber away.
AUTOMATIC_CLASSES = {1: "liver", 3: "spleen"}

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    cgi = pytest.importorskip("cgi", reason="the plugin reads answers with cgi, which Python 3.13 removed")


class PluginCalls:
    """The plugin's requests to ``server_url`` (e.g. ``http://127.0.0.1:8765/monailabel``)."""

    def __init__(self, server_url: str, token: str | None = None) -> None:
        self.server_url = server_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    # ---- what the client sends ---------------------------------------------------------------------
    def with_headers(self, headers: dict[str, str]) -> PluginCalls:
        """The same calls sending ``headers`` instead of the token's."""
        other = PluginCalls(self.server_url)
        other.headers = headers
        return other

    def url(self, selector: str) -> str:
        return self.server_url + "/" + selector.lstrip("/")

    def get(self, selector: str, authorized: bool = True) -> requests.Response:
        return requests.get(self.url(selector), headers=self.headers if authorized else {}, timeout=120)

    def delete(self, selector: str) -> requests.Response:
        return requests.delete(self.url(selector), headers=self.headers, timeout=30)

    def login(self, username: str, password: str) -> requests.Response:
        form = f"username={username}&password={password}&grant_type=password"
        return requests.post(self.url("/auth/token"), data=form, timeout=30,
                             headers={"content-type": "application/x-www-form-urlencoded"})

    def form_request(self, method: str, selector: str, fields: dict[str, str],
                     files: dict[str, str]) -> requests.Response:
        """``MONAILabelUtils.http_multipart``: its body layout and headers, sent with ``requests``."""
        content_type, body = plugin_form(fields, files)
        return requests.request(method, self.url(selector), data=body, timeout=600,
                                headers={**self.headers, "content-type": content_type,
                                         "content-length": str(len(body))})

    def upload_image(self, path: Path, image_id: str) -> requests.Response:
        params = json.dumps({"client_id": CLIENT_ID})
        return self.form_request("PUT", f"/datastore/?image={quote(image_id)}", {"params": params},
                                 {"file": str(path)})

    def create_session(self, path: Path) -> requests.Response:
        """``MONAILabelUtils.http_upload``: ``requests.put(files=[("files", ...)], data={client_id})``."""
        with open(path, "rb") as handle:
            return requests.put(self.url("/session/"), files=[("files", (path.name, handle))],
                                data={"client_id": CLIENT_ID}, headers=self.headers, timeout=120)

    def infer(self, model: str, image_id: str, params: dict[str, Any],
              session_id: str | None = None) -> requests.Response:
        params = {**params, "result_extension": ".nrrd", "result_dtype": "uint8", "client_id": CLIENT_ID}
        selector = f"/infer/{quote(model)}?image={quote(image_id)}"
        if session_id:
            selector += f"&session_id={quote(session_id)}"
        return self.form_request("POST", selector, {"params": json.dumps(params)}, {})


def plugin_form(fields: dict[str, str], files: dict[str, str]) -> tuple[str, bytes]:
    """A multipart body as the plugin writes one: CRLF lines, fields, then files named by their full path."""
    lines: list[bytes] = []
    for key, value in fields.items():
        lines += [f"--{PLUGIN_BOUNDARY}".encode(), f'Content-Disposition: form-data; name="{key}"'.encode(), b"",
                  value.encode()]
    for key, filename in files.items():
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        lines += [f"--{PLUGIN_BOUNDARY}".encode(),
                  f'Content-Disposition: form-data; name="{key}"; filename="{filename}"'.encode(),
                  f"Content-Type: {content_type}".encode(), b"", Path(filename).read_bytes()]
    lines += [f"--{PLUGIN_BOUNDARY}--".encode(), b""]
    return f"multipart/form-data; boundary={PLUGIN_BOUNDARY}", b"".join(line + b"\r\n" for line in lines)


def read_result(answer: requests.Response) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(params, {file name: bytes})`` of an inference answer, read as the plugin reads it."""
    assert answer.status_code == 200, answer.text
    assert "multipart" in answer.headers["content-type"]
    storage = cgi.FieldStorage(fp=io.BytesIO(answer.content), environ={"REQUEST_METHOD": "POST"},
                               headers={"content-type": answer.headers["content-type"],
                                        "content-length": str(len(answer.content))}, keep_blank_values=True)
    form, files = {}, {}
    for field in storage.list:
        if field.filename:
            files[field.filename] = field.value
        else:
            form[field.name] = field.value
    params = form.get("params") if files else form
    return (json.loads(params) if isinstance(params, str) else params), files


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Served by the parent conftest's ``live`` server: a tiny STU-Net with a class-id gap and a click model."""
    root = tmp_path_factory.mktemp("models")
    stunet = save_tiny_model(root / "tiny-stunet", classes=AUTOMATIC_CLASSES, spacing=None, patch_size=(16, 64, 64))
    return [stunet, save_click_model(root / "tiny-click")]


@pytest.fixture(scope="module")
def uploaded_ct(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CT crop (STS_001) saved as Slicer saves a volume node (.nii.gz), with a flipped direction and
    an off-centre origin so that the answer's geometry is checked on more than the identity."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(shared_data / "sts" / "STS_001" / "ct.nii.gz"))[50:146, 60:140, 14:44]
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    image.SetOrigin((112.5, -40.25, 617.0))
    path = tmp_path_factory.mktemp("slicer") / "tmp8x2k_q1c.nii.gz"
    sitk.WriteImage(image, str(path), True)
    return path


@pytest.fixture
def read_answer():  # noqa: ANN201 - read_result, for the test modules (conftest is not importable)
    return read_result


@pytest.fixture
def plugin_calls() -> type[PluginCalls]:
    """The class, for a test that starts a server of its own."""
    return PluginCalls


@pytest.fixture
def plugin(live) -> PluginCalls:  # noqa: ANN001 - support.live_server.ThreadedServer
    return PluginCalls(live.url + "/monailabel", TEST_TOKEN)
