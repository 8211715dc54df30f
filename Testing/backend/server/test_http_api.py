"""The /v1 protocol on a real uvicorn server: status codes, headers, payloads, auth and limits.

Raw ``requests`` calls check the wire itself (what any client sees); the module's client is used
where only the content matters. The image is a real CT and the models are real (tiny) networks.
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import pytest
import requests
from support.live_server import TEST_TOKEN as TOKEN
from support.live_server import ThreadedServer, module_on_path
from tsfm_backend.server import wire

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _upload_body(ct, compression: str = "zlib") -> bytes:  # noqa: ANN001
    array, spacing, origin, direction = ct
    header = {"spacing": list(spacing), "origin": list(origin), "direction": list(direction)}
    return wire.encode_frame(header, array, compression)


def _post_image(live: ThreadedServer, body: bytes) -> requests.Response:
    return requests.post(live.url + "/v1/images", data=body, headers={**AUTH, "Content-Type": wire.MEDIA_TYPE},
                         timeout=30)


def _wait_state(client, job_id: str, states: tuple[str, ...], timeout_s: float = 120) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.job(job_id)
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {status}")


def test_health_is_open_and_every_other_route_needs_the_bearer_token(live: ThreadedServer) -> None:
    health = requests.get(live.url + "/v1/health", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok", "api_version": "1.0"}
    for headers in ({}, {"Authorization": "Bearer wrong-token-value"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}):
        answer = requests.get(live.url + "/v1/info", headers=headers, timeout=5)
        assert answer.status_code == 401, headers
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in answer.json()["error"]
    assert requests.post(live.url + "/v1/jobs", json={}, timeout=5).status_code == 401


def test_info_reports_versions_device_models_and_limits(client) -> None:  # noqa: ANN001
    info = client.info()
    assert info["api_version"] == "1.0" and info["auth"] is True
    assert {"tsfm-backend", "torch", "numpy", "fastapi"} <= set(info["versions"])
    assert info["device"]["type"] == "cpu" and info["device"]["name"]
    assert info["models"] == ["tiny-click", "tiny-stunet"]
    assert info["limits"]["max_sessions"] == 3 and info["limits"]["max_request_bytes"] == 16 << 20


def test_models_lists_kind_classes_and_license(client) -> None:  # noqa: ANN001
    models = {model["id"]: model for model in client.models()}
    assert models["tiny-stunet"]["kind"] == "automatic"
    assert models["tiny-stunet"]["classes"] == {"1": "liver", "2": "spleen"}
    assert models["tiny-click"]["kind"] == "promptable"
    assert all(model["license"] == "Apache-2.0" for model in models.values())


def test_images_are_content_addressed_and_uploaded_once(live: ThreadedServer, small_ct) -> None:  # noqa: ANN001
    first = _post_image(live, _upload_body(small_ct, "zlib"))
    again = _post_image(live, _upload_body(small_ct, "gzip"))
    assert (first.status_code, again.status_code) == (201, 200) or first.json()["exists"]
    image_id = first.json()["image_id"]
    assert again.json()["image_id"] == image_id and again.json()["exists"] is True
    assert image_id == wire.image_digest(*small_ct)
    described = requests.get(f"{live.url}/v1/images/{image_id}", headers=AUTH, timeout=5).json()
    assert described["shape"] == [30, 101, 122] and described["dtype"] == "int16"
    np.testing.assert_allclose(described["spacing"], small_ct[1])
    np.testing.assert_allclose(described["direction"], small_ct[3])
    assert requests.head(f"{live.url}/v1/images/{image_id}", headers=AUTH, timeout=5).status_code == 200
    assert requests.head(f"{live.url}/v1/images/{'0' * 32}", headers=AUTH, timeout=5).status_code == 404


def test_the_client_skips_the_upload_of_an_image_the_server_holds(client, live, small_ct) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    uploads = []
    original = live.services.upload_image
    live.services.upload_image = lambda body: uploads.append(len(body)) or original(body)
    try:
        assert client.upload_image(*small_ct) == image_id
        shifted = (small_ct[0], small_ct[1], (small_ct[2][0] + 1.0, *small_ct[2][1:]), small_ct[3])
        assert client.upload_image(*shifted) != image_id
    finally:
        live.services.upload_image = original
    assert len(uploads) == 1  # only the moved image travelled


def test_a_job_segments_real_ct_onto_its_own_grid(client, small_ct) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    job_id = client.start_job(image_id, "tiny-stunet", {"step": 1.0})
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    status = client.wait_for_job(job_id, poll_s=0.1, timeout_s=180)
    assert status["state"] == "done" and status["progress"] == 1.0 and status["seconds"] > 0
    labels, names = client.job_result(job_id)
    assert labels.shape == small_ct[0].shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2} and names == {1: "liver", 2: "spleen"}


def test_result_before_done_is_409_and_cancel_stops_a_running_job(live, client, small_ct) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    job_id = client.start_job(image_id, "tiny-stunet", {"step": 0.1})
    _wait_state(client, job_id, ("running",))
    early = requests.get(f"{live.url}/v1/jobs/{job_id}/result", headers=AUTH, timeout=5)
    assert early.status_code == 409 and "running" in early.json()["error"]
    cancel = requests.delete(f"{live.url}/v1/jobs/{job_id}", headers=AUTH, timeout=5)
    assert cancel.status_code == 202
    status = _wait_state(client, job_id, ("cancelled", "done", "failed"), timeout_s=60)
    assert status["state"] == "cancelled" and status["progress"] < 1.0
    assert requests.get(f"{live.url}/v1/jobs/{job_id}/result", headers=AUTH, timeout=5).status_code == 409


def test_a_full_job_queue_answers_503_with_retry_after(live, client, small_ct) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    body = {"image_id": image_id, "model": "tiny-stunet", "options": {"step": 0.1}}
    jobs = [client.start_job(image_id, "tiny-stunet", {"step": 0.1})]
    _wait_state(client, jobs[0], ("running",))
    jobs += [client.start_job(image_id, "tiny-stunet", {"step": 0.1}) for _ in range(2)]
    refused = requests.post(live.url + "/v1/jobs", json=body, headers=AUTH, timeout=5)
    for job_id in jobs:
        client.cancel_job(job_id)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
    assert "already queued" in refused.json()["error"]
    final = [_wait_state(client, job_id, ("cancelled", "done", "failed"), 60)["state"] for job_id in jobs]
    assert final == ["cancelled"] * 3


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"image_id": "IMAGE", "model": "tiny-stunet"}, 404, "image"),
        ({"image_id": "IMAGE", "model": "no-such-model"}, 404, "available: tiny-click, tiny-stunet"),
        ({"image_id": "IMAGE", "model": "tiny-click"}, 400, "promptable"),
        ({"image_id": "IMAGE", "model": "tiny-stunet", "options": {"step": 0}}, 422, "options.step"),
        ({"image_id": "IMAGE", "model": "tiny-stunet", "options": {"gpu_hack": 1}}, 422, "options.gpu_hack"),
        ({"image_id": "IMAGE", "model": "../../etc/passwd"}, 422, "model"),
        ({"image_id": "../../x", "model": "tiny-stunet"}, 422, "image_id"),
    ],
)
def test_bad_job_requests_name_the_problem(live, client, small_ct, body, status, message) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    if body["image_id"] == "IMAGE":
        body = {**body, "image_id": image_id if status != 404 or body["model"] != "tiny-stunet" else "f" * 32}
    answer = requests.post(live.url + "/v1/jobs", json=body, headers=AUTH, timeout=5)
    assert answer.status_code == status and message in answer.json()["error"]


@pytest.mark.parametrize("path", ["/v1/jobs/" + "0" * 32, "/v1/jobs/" + "0" * 32 + "/result",
                                  "/v1/images/" + "a" * 32])
def test_unknown_ids_are_404(live: ThreadedServer, path: str) -> None:
    answer = requests.get(live.url + path, headers=AUTH, timeout=5)
    assert answer.status_code == 404 and answer.json()["error"]


@pytest.mark.parametrize("job_id", ["..%2F..%2Fetc%2Fpasswd", "ABCDEF" * 6, "0" * 31, "0" * 33, "%00", "1;rm"])
def test_ids_that_are_not_server_hex_are_refused(live: ThreadedServer, job_id: str) -> None:
    answer = requests.get(f"{live.url}/v1/jobs/{job_id}", headers=AUTH, timeout=5)
    assert answer.status_code in (404, 422) and "error" in answer.json()


def test_bodies_over_the_size_limit_are_413_declared_or_streamed(live: ThreadedServer) -> None:
    big = b"\0" * ((16 << 20) + 1)
    declared = requests.post(live.url + "/v1/images", data=big, headers=AUTH, timeout=30)
    assert declared.status_code == 413 and "limit" in declared.json()["error"]
    streamed = requests.post(live.url + "/v1/images", data=(big[i:i + (1 << 20)] for i in range(0, len(big), 1 << 20)),
                             headers=AUTH, timeout=30)
    assert streamed.status_code == 413
    json_streamed = requests.post(live.url + "/v1/jobs", data=iter([b"{" + b" " * (17 << 20)]), headers=AUTH,
                                  timeout=30)
    assert json_streamed.status_code == 413


def test_an_array_too_large_once_inflated_is_refused_before_inflating(live: ThreadedServer) -> None:
    header = {"spacing": [1, 1, 1], "array": {"dtype": "int16", "shape": [512, 512, 512], "compression": "zlib"}}
    body = wire.encode_frame({"spacing": [1, 1, 1]}, np.zeros((1, 1, 1), np.int16))
    import json
    import struct

    text = json.dumps(header).encode()
    forged = struct.pack("<4sBI", b"TSFM", 1, len(text)) + text + zlib.compress(b"\0" * 1024)
    answer = _post_image(live, forged)
    assert answer.status_code == 400 and "over the limit" in answer.json()["error"]
    assert _post_image(live, body).status_code in (200, 201)


def test_interactive_session_over_http(live, client, small_ct) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    session_id = client.create_session(image_id, "tiny-click")
    shape = small_ct[0].shape
    origin, crop = client.interact(session_id, {"kind": "point", "point": [15, 50, 60], "positive": True})
    assert crop.dtype == np.uint8 and set(np.unique(crop)) <= {0, 1}
    assert all(0 <= o and o + n <= s for o, n, s in zip(origin, crop.shape, shape, strict=True))
    raw = requests.post(f"{live.url}/v1/sessions/{session_id}/interactions", headers=AUTH, timeout=30,
                        json={"kind": "box", "box": [[10, 40, 50], [20, 60, 70]], "positive": True})
    assert raw.status_code == 200 and raw.headers["content-type"] == wire.MEDIA_TYPE
    header, payload = wire.split_frame(raw.content)
    assert header["image_shape"] == list(shape) and header["object_id"] == 1
    client.undo(session_id, 1)
    client.redo(session_id, 1)
    assert client.heartbeat(session_id) > 100
    outside = requests.post(f"{live.url}/v1/sessions/{session_id}/interactions", headers=AUTH, timeout=30,
                            json={"kind": "point", "point": [30, 0, 0]})
    assert outside.status_code == 400 and "outside" in outside.json()["error"]
    client.reset_session(session_id)
    client.close_session(session_id)
    gone = requests.post(f"{live.url}/v1/sessions/{session_id}/heartbeat", headers=AUTH, timeout=5)
    assert gone.status_code == 404


def test_a_session_takes_the_modality_of_the_image(live, client, small_ct) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    created = requests.post(f"{live.url}/v1/sessions", headers=AUTH, timeout=30,
                            json={"image_id": image_id, "model": "tiny-click", "modality": "PT"})
    assert created.status_code in (200, 201) and created.json()["modality"] == "PET"  # DICOM's name for PET
    client.close_session(created.json()["session_id"])
    unknown = requests.post(f"{live.url}/v1/sessions", headers=AUTH, timeout=30,
                            json={"image_id": image_id, "model": "tiny-click", "modality": "US"})
    assert unknown.status_code == 422 and "modality" in unknown.text
    client.close_session(client.create_session(image_id, "tiny-click", "CT"))


def test_a_session_starts_from_a_mask_sent_with_the_interaction(client, small_ct) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    session_id = client.create_session(image_id, "tiny-click")
    seed = np.zeros(small_ct[0].shape, np.uint8)
    seed[12:18, 40:60, 50:70] = 1
    origin, crop = client.interact(session_id, None, mask=seed)
    assert origin == (12, 40, 50) and crop.shape == (6, 20, 20) and crop.all()
    wrong = np.zeros((2, 2, 2), np.uint8)
    module_on_path()
    from TSFMSegmentationLib.client import BadRequest

    with pytest.raises(BadRequest, match=r"starting mask has shape \[2, 2, 2\]"):
        client.interact(session_id, {"kind": "point", "point": [1, 1, 1]}, mask=wrong)
    client.close_session(session_id)


def test_sessions_at_capacity_answer_503_and_expired_ones_410(live, client, small_ct) -> None:  # noqa: ANN001
    module_on_path()
    from TSFMSegmentationLib.client import ServerBusy, SessionExpired

    image_id = client.upload_image(*small_ct)
    sessions = [client.create_session(image_id, "tiny-click") for _ in range(3)]
    with pytest.raises(ServerBusy) as busy:
        client.create_session(image_id, "tiny-click")
    assert busy.value.retry_after == 2 and "maximum of 3" in str(busy.value)
    registry = live.services.sessions
    registry.liveness_s = 0.2
    try:
        time.sleep(0.3)
        with pytest.raises(SessionExpired, match="re-seed"):
            client.interact(sessions[0], {"kind": "point", "point": [15, 50, 60]})
    finally:
        registry.liveness_s = 120.0
    assert len(registry) == 0
    client.close_session(client.create_session(image_id, "tiny-click"))


def test_clicks_are_answered_while_a_long_job_runs(live, client, small_ct) -> None:  # noqa: ANN001
    image_id = client.upload_image(*small_ct)
    session_id = client.create_session(image_id, "tiny-click")
    reference_session = client.create_session(image_id, "tiny-click")
    job_id = client.start_job(image_id, "tiny-stunet", {"step": 0.1})
    _wait_state(client, job_id, ("running",))
    answers = [client.interact(session_id, {"kind": "point", "point": [15, 50 + n, 60]}) for n in range(3)]
    during = client.job(job_id)
    client.cancel_job(job_id)
    _wait_state(client, job_id, ("cancelled", "done", "failed"), timeout_s=60)
    assert during["state"] == "running" and during["progress"] < 1.0  # the clicks did not wait for the job
    for n, (origin, crop) in enumerate(answers):  # same answers as with no job running
        expected_origin, expected = client.interact(reference_session, {"kind": "point", "point": [15, 50 + n, 60]})
        assert origin == expected_origin
        np.testing.assert_array_equal(crop, expected)
    client.close_session(session_id)
    client.close_session(reference_session)
