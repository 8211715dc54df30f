"""MONAI Label's Slicer plugin, replayed request by request against a real server on loopback.

The image is a real CT (STS_001, cropped, flipped direction) saved as Slicer saves a volume node; the
models are a tiny STU-Net (automatic, classes {1: liver, 3: spleen}) and a tiny click U-Net. Results
are compared voxel for voxel with our engine run in-process on the same volume and prompts.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from support.live_server import TEST_TOKEN, ThreadedServer, backend_app
from tsfm_backend.image_io import read_volume

CT_NAME = "STS_001 ct"  # the plugin names an upload after its volume node


def _label_map(files: dict[str, bytes], tmp_path: Path) -> sitk.Image:
    """Save the answer's one file under its own name, as the plugin does, and read it with SimpleITK."""
    (name, data), = files.items()
    assert name.endswith(".nrrd") and "/" not in name
    path = tmp_path / name
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


def _assert_same_grid(labels: sitk.Image, uploaded: Path) -> None:
    image = sitk.ReadImage(str(uploaded))
    assert labels.GetSize() == image.GetSize()
    assert np.allclose(labels.GetSpacing(), image.GetSpacing())
    assert np.allclose(labels.GetOrigin(), image.GetOrigin())
    assert np.allclose(labels.GetDirection(), image.GetDirection())


@contextlib.contextmanager
def _counted_passes(network) -> Iterator[list[int]]:  # noqa: ANN001 - torch.nn.Module
    """Count the network's forward passes inside the block."""
    calls = [0]
    handle = network.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def _engine_mask(live, prompts: list[tuple], volume) -> tuple[np.ndarray, list[int]]:  # noqa: ANN001
    """Our engine in-process on ``prompts`` in order, each ``(positive, (k, j, i))`` for a click or
    ``("box", ((k0, j0, i0), (k1, j1, i1)))``: the object's mask and the network passes of each prompt."""
    services = live.services
    loaded = services.models.get("tiny-click")
    session = services.engine.open_session(loaded, volume, services.device, None, 0)
    passes = []
    for first, second in prompts:
        interaction = (services.engine.interaction("box", True, None, second, 1) if first == "box"
                       else services.engine.interaction("point", first, second, None, 1))
        with _counted_passes(loaded.network) as calls:
            session.interact(interaction)
        passes.append(calls[0])
    return session.mask(1), passes


def test_auth_probe_login_and_token(plugin) -> None:
    probe = plugin.get("/auth/", authorized=False)  # the plugin asks this before every action, without a token
    assert probe.status_code == 200 and probe.json()["enabled"] is True
    wrong = plugin.login("user-xyz", "not-the-token")
    assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
    token = plugin.login("user-xyz", TEST_TOKEN)
    assert token.status_code == 200 and token.json() == {"access_token": TEST_TOKEN, "token_type": "Bearer"}
    assert plugin.get("/auth/token/valid").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-value"}, {"Authorization": TEST_TOKEN}):
        refused = plugin.with_headers(headers)
        answer = refused.get("/info/")
        assert answer.status_code == 401 and "token" in answer.json()["detail"], headers
        assert refused.get("/auth/token/valid").status_code == 401


def test_info_lists_every_served_model_with_type_and_labels(plugin) -> None:
    info = plugin.get("/info/").json()
    assert "config" not in info  # the plugin asks for a server upgrade when it finds one
    assert set(info["models"]) == {"tiny-stunet", "tiny-click"}
    automatic, click = info["models"]["tiny-stunet"], info["models"]["tiny-click"]
    assert automatic["type"] == "segmentation" and automatic["dimension"] == 3
    assert automatic["labels"] == {"liver": 1, "spleen": 2}  # class 3 travels as 2: values are positions
    assert automatic["config"]["fast"] is False and automatic["description"]
    assert click["type"] == "deepgrow" and click["labels"] == [] and click["dimension"] == 3
    assert info["labels"] == ["liver", "spleen"]
    assert info["trainers"] == {} and info["strategies"] == {} and info["scoring"] == {}


def test_upload_then_automatic_segmentation_matches_the_engine(plugin, read_answer, live, uploaded_ct: Path,
                                                              tmp_path: Path) -> None:  # noqa: ANN001
    upload = plugin.upload_image(uploaded_ct, CT_NAME)
    assert upload.status_code == 200 and upload.json() == {"image": CT_NAME}
    params, files = read_answer(plugin.infer("tiny-stunet", CT_NAME, {"fast": False, "tta": False}))
    assert params["label_names"] == {"liver": 1, "spleen": 2}
    labels = _label_map(files, tmp_path)
    _assert_same_grid(labels, uploaded_ct)
    assert labels.GetPixelIDTypeAsString() == "8-bit unsigned integer"

    services = live.services
    expected, names = services.engine.segment(services.models.get("tiny-stunet"), read_volume(uploaded_ct),
                                              {}, services.device, lambda *_: None, lambda: False)
    assert names == {1: "liver", 3: "spleen"}
    renumbered = np.select([expected == 1, expected == 3], [1, 2], 0)
    answer = sitk.GetArrayFromImage(labels)
    assert np.array_equal(answer, renumbered) and set(np.unique(answer)) <= {0, 1, 2}


def test_clicks_in_a_session_match_the_engine_and_resent_clicks_run_once(plugin, read_answer, live,
                                                                        uploaded_ct: Path, tmp_path: Path) -> None:  # noqa: ANN001
    session = plugin.create_session(uploaded_ct)
    assert session.status_code == 200
    session_id = session.json()["session_id"]
    assert plugin.get(f"/session/{session_id}").status_code == 200  # the plugin checks it before each click

    volume = read_volume(uploaded_ct)
    depth, rows, columns = volume.shape  # (K, J, I)
    first = [columns // 2, rows // 2, depth // 2]  # [i, j, k], as the plugin sends points
    second = [columns // 2 + 6, rows // 2 - 4, depth // 2]
    third = [columns // 2 - 9, rows // 2 + 7, depth // 2 + 1]
    network = live.services.models.get("tiny-click").network
    one = {"label": "tumour", "foreground": [first], "background": []}
    with _counted_passes(network) as first_passes:
        params, files = read_answer(plugin.infer("tiny-click", CT_NAME, one, session_id))
    assert params["label_names"] == {"tumour": 1}
    mask_one = _label_map(files, tmp_path)
    _assert_same_grid(mask_one, uploaded_ct)

    two = {"label": "tumour", "foreground": [first], "background": [second]}
    with _counted_passes(network) as second_passes:
        _, files = read_answer(plugin.infer("tiny-click", CT_NAME, two, session_id))
    mask_two = sitk.GetArrayFromImage(_label_map(files, tmp_path))

    three = {"label": "tumour", "foreground": [first, third], "background": [second]}
    _, files = read_answer(plugin.infer("tiny-click", CT_NAME, three, session_id))
    mask_three = sitk.GetArrayFromImage(_label_map(files, tmp_path))

    ijk_to_kji = lambda p: (p[2], p[1], p[0])  # noqa: E731
    expected_one, _ = _engine_mask(live, [(True, ijk_to_kji(first))], volume)
    expected_two, passes = _engine_mask(live, [(True, ijk_to_kji(first)), (False, ijk_to_kji(second))], volume)
    expected_three, _ = _engine_mask(live, [(True, ijk_to_kji(first)), (False, ijk_to_kji(second)),
                                            (True, ijk_to_kji(third))], volume)
    assert np.array_equal(sitk.GetArrayFromImage(mask_one), expected_one) and expected_one.any()
    assert np.array_equal(mask_two, expected_two)
    assert np.array_equal(mask_three, expected_three)
    # The second request resent the first click: only the new one ran, as its own passes in the engine.
    assert first_passes[0] == passes[0] and second_passes[0] == passes[1]
    assert second_passes[0] < passes[0] + passes[1]


def test_a_moved_click_replays_all_and_labels_keep_their_own_sessions(plugin, read_answer, live,
                                                                      uploaded_ct: Path, tmp_path: Path) -> None:  # noqa: ANN001
    assert plugin.upload_image(uploaded_ct, CT_NAME).status_code == 200
    volume = read_volume(uploaded_ct)
    depth, rows, columns = volume.shape  # (K, J, I)
    a, b = [columns // 3, rows // 3, depth // 2], [columns // 3 + 5, rows // 3 + 5, depth // 2]
    moved = [columns // 3 + 8, rows // 3 - 2, depth // 2 - 1]
    read_answer(plugin.infer("tiny-click", CT_NAME, {"label": "lesion", "foreground": [a, b]}))
    read_answer(plugin.infer("tiny-click", CT_NAME, {"label": "other", "foreground": [b]}))
    _, files = read_answer(plugin.infer("tiny-click", CT_NAME, {"label": "lesion", "foreground": [a, moved]}))
    expected, _ = _engine_mask(live, [(True, (a[2], a[1], a[0])), (True, (moved[2], moved[1], moved[0]))], volume)
    assert np.array_equal(sitk.GetArrayFromImage(_label_map(files, tmp_path)), expected)


def test_an_roi_is_a_box_prompt_before_the_clicks(plugin, read_answer, live, uploaded_ct: Path,
                                                 tmp_path: Path) -> None:  # noqa: ANN001
    assert plugin.upload_image(uploaded_ct, CT_NAME).status_code == 200
    volume = read_volume(uploaded_ct)
    depth, rows, columns = volume.shape
    point = [columns // 2, rows // 2, depth // 2]
    # [i0, i1, j0, j1, k0, k1] with i0 > i1, as a flipped volume's RAS-to-IJK mapping gives corners.
    roi = [columns // 2 + 10, columns // 2 - 10, rows // 2 - 8, rows // 2 + 8, depth // 2 - 2, depth // 2 + 2]
    _, files = read_answer(plugin.infer("tiny-click", CT_NAME, {"label": "boxed", "foreground": [point], "roi": roi}))
    box = ((depth // 2 - 2, rows // 2 - 8, columns // 2 - 10), (depth // 2 + 2, rows // 2 + 8, columns // 2 + 10))
    expected, _ = _engine_mask(live, [("box", box), (True, (point[2], point[1], point[0]))], volume)
    assert np.array_equal(sitk.GetArrayFromImage(_label_map(files, tmp_path)), expected)


def test_errors_answer_a_status_and_a_detail_the_plugin_shows(plugin, uploaded_ct: Path,
                                                             tmp_path: Path) -> None:
    assert plugin.upload_image(uploaded_ct, CT_NAME).status_code == 200
    unknown = plugin.infer("no-such-model", CT_NAME, {})
    assert unknown.status_code == 404 and "tiny-click" in unknown.json()["detail"]
    not_uploaded = plugin.infer("tiny-click", "never uploaded", {"label": "x", "foreground": [[1, 1, 1]]})
    assert not_uploaded.status_code == 404 and "upload" in not_uploaded.json()["detail"]
    outside = plugin.infer("tiny-click", CT_NAME, {"label": "x", "foreground": [[1, 1, 5000]]})
    assert outside.status_code == 400 and "outside the image" in outside.json()["detail"]
    for bad in ({"label": "x", "foreground": [[1, 2]]}, {"label": "x", "foreground": "[1, 2, 3]"},
                {"foreground": [[1, 1, 1]]}, {"label": "x", "foreground": [[1.5, 1, 1]]}, {"label": "x"}):
        answer = plugin.infer("tiny-click", CT_NAME, bad)
        assert answer.status_code == 400 and answer.json()["detail"], bad
    options = plugin.infer("tiny-stunet", CT_NAME, {"tta": "yes"})
    assert options.status_code == 422 and "tta" in options.json()["detail"]
    for body in ('{"label": "x", ', "[1, 2]"):
        answer = plugin.form_request("POST", f"/infer/tiny-click?image={CT_NAME}", {"params": body}, {})
        assert answer.status_code == 422 and "params" in answer.json()["detail"]
    assert plugin.get("/session/0123456789abcdef").status_code == 404

    text = tmp_path / "notes.txt"
    text.write_text("not a volume")
    refused = plugin.form_request("PUT", "/datastore/?image=notes", {"params": "{}"}, {"file": str(text)})
    assert refused.status_code == 400 and ".nii.gz" in refused.json()["detail"]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(uploaded_ct.read_bytes()[:5000])
    damaged = plugin.form_request("PUT", "/datastore/?image=broken", {"params": "{}"}, {"file": str(broken)})
    assert damaged.status_code == 400 and "broken.nii.gz" in damaged.json()["detail"]
    assert "/tmp" not in damaged.json()["detail"]  # the server's temporary path is not shown


@pytest.mark.parametrize(("method", "selector"), [
    ("GET", "/train/?check_if_running=true"), ("POST", "/train/segmentation"), ("DELETE", "/train/"),
    ("POST", "/activelearning/random"), ("GET", "/datastore/?output=all"), ("PUT", "/datastore/label?image=x"),
    ("POST", "/scoring/dice"), ("POST", "/infer/wsi/model?image=x"),
])
def test_out_of_scope_routes_say_so(plugin, method: str, selector: str) -> None:
    answer = plugin.form_request(method, selector, {"params": "{}"}, {})
    assert answer.status_code == 501
    assert "not served" in answer.json()["detail"] and "inference only" in answer.json()["detail"]


def test_uploads_are_bounded_before_they_are_read(plugin, live) -> None:  # noqa: ANN001
    limit = live.services.settings.max_request_bytes
    answer = plugin.form_request("PUT", "/datastore/?image=big", {"params": "{}"}, {})
    assert answer.status_code == 400  # a form without its file
    import requests

    too_big = requests.put(plugin.url("/datastore/?image=big"), data=b"x" * (limit + 1), timeout=60,
                           headers={**plugin.headers, "content-type": "multipart/form-data; boundary=b"})
    assert too_big.status_code == 413 and str(limit) in too_big.json()["detail"]
    json_sized = requests.post(plugin.url("/infer/tiny-click?image=x"), data=b"x" * (2 << 20), timeout=60,
                               headers={**plugin.headers, "content-type": "multipart/form-data; boundary=b"})
    assert json_sized.status_code == 413


def test_session_lifecycle(plugin, uploaded_ct: Path) -> None:
    created = plugin.create_session(uploaded_ct).json()
    session_id, info = created["session_id"], created["session_info"]
    assert info["name"] == session_id and info["expiry"] == 3600 and info["create_ts"] > 0
    assert plugin.get(f"/session/{session_id}").json()["image"] == info["image"]
    assert plugin.delete(f"/session/{session_id}").status_code == 200
    gone = plugin.get(f"/session/{session_id}")
    assert gone.status_code == 404 and session_id in gone.json()["detail"]


def test_a_session_whose_image_was_dropped_answers_404(plugin_calls, model_paths: list[Path], uploaded_ct: Path,
                                                      tmp_path: Path) -> None:  # noqa: ANN001
    image = sitk.ReadImage(str(uploaded_ct))
    other = tmp_path / "other.nii.gz"
    sitk.WriteImage(image + 1.0, str(other), True)
    voxel_bytes = sitk.GetArrayViewFromImage(image).nbytes
    app, _ = backend_app(model_paths, token=TEST_TOKEN, image_store_bytes=voxel_bytes + 1024)
    with ThreadedServer(app) as server:
        calls = plugin_calls(server.url + "/monailabel", TEST_TOKEN)
        first = calls.create_session(uploaded_ct).json()["session_id"]
        assert calls.get(f"/session/{first}").status_code == 200
        second = calls.create_session(other).json()["session_id"]  # the store holds one image: the first goes
        gone = calls.get(f"/session/{first}")
        assert gone.status_code == 404 and "upload the image again" in gone.json()["detail"]
        assert calls.get(f"/session/{second}").status_code == 200


def test_closing_the_connection_cancels_the_automatic_job(plugin, live, shared_data: Path) -> None:  # noqa: ANN001
    whole_ct = shared_data / "sts" / "STS_001" / "ct.nii.gz"  # whole, so the job runs long enough to be caught
    assert plugin.upload_image(whole_ct, "whole ct").status_code == 200
    jobs = live.services.jobs
    cancelled = jobs.count("cancelled")
    body = (b'--b\r\nContent-Disposition: form-data; name="params"\r\n\r\n{}\r\n--b--\r\n')
    request = (f"POST /monailabel/infer/tiny-stunet?image=whole+ct HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {TEST_TOKEN}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as connection:
        connection.sendall(request)
        _wait_for(lambda: jobs.count("running") == 1)
    _wait_for(lambda: jobs.count("cancelled") == cancelled + 1)
    assert jobs.count("running") == 0


def _wait_for(condition, timeout_s: float = 120.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.02)
