"""Server limits on a real loopback server: a full model worker never delays health or heartbeats,
concurrent uploads and model requests are bounded (503 + Retry-After), sizes are checked before
inflating, the undo history is capped per object, and the OpenAPI schema needs the token."""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from support.live_server import TEST_TOKEN as TOKEN
from support.live_server import ThreadedServer, backend_app, save_click_model
from tsfm_backend.server import wire
from tsfm_backend.server.settings import Settings, SettingsError

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FRAME = {**AUTH, "Content-Type": wire.MEDIA_TYPE}
GEOMETRY = {"spacing": [3.0, 3.0, 3.0], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
CLICKS = 64
MODEL_REQUESTS = 8


@pytest.fixture(scope="module")
def click_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_click_model(tmp_path_factory.mktemp("models") / "tiny-click")


@pytest.fixture(scope="module")
def server(click_model: Path):  # noqa: ANN201 - ThreadedServer with .services
    app, services = backend_app([click_model], token=TOKEN, max_sessions=4, max_model_requests=MODEL_REQUESTS,
                                max_uploads=1, max_undo_steps=3, max_request_bytes=16 << 20,
                                image_store_bytes=8 << 20)
    with ThreadedServer(app) as live:
        live.services = services
        yield live


@pytest.fixture(scope="module")
def image(small_ct) -> np.ndarray:  # noqa: ANN001
    return np.ascontiguousarray(small_ct[0][:16, :48, :48])


def upload(server: ThreadedServer, array: np.ndarray) -> str:
    answer = requests.post(server.url + "/v1/images", data=wire.encode_frame(GEOMETRY, array), headers=FRAME,
                           timeout=30)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["image_id"]


def open_session(server: ThreadedServer, image_id: str) -> str:
    answer = requests.post(server.url + "/v1/sessions", json={"image_id": image_id, "model": "tiny-click"},
                           headers=AUTH, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["session_id"]


def timed(method: str, url: str, **kwargs) -> tuple[int, float]:  # noqa: ANN003
    started = time.monotonic()
    answer = requests.request(method, url, headers=AUTH, timeout=5, **kwargs)
    return answer.status_code, time.monotonic() - started


def test_health_and_heartbeat_answer_while_64_clicks_wait_for_a_busy_model(server: ThreadedServer,  # noqa: ANN001
                                                                          image: np.ndarray) -> None:
    session_id = open_session(server, upload(server, image))
    release = threading.Event()
    server.services.worker.submit_batch(lambda: release.wait(30))  # the model worker is busy until released
    click = {"kind": "point", "point": [8, 24, 24]}

    def send_click(_: int) -> requests.Response:
        return requests.post(f"{server.url}/v1/sessions/{session_id}/interactions", json=click, headers=AUTH,
                             timeout=60)

    with ThreadPoolExecutor(CLICKS) as pool:
        try:
            futures = [pool.submit(send_click, n) for n in range(CLICKS)]
            deadline = time.monotonic() + 10
            while sum(f.done() for f in futures) < CLICKS - MODEL_REQUESTS and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # the admitted clicks are parked on the worker now
            for method, path in (("GET", "/v1/health"), ("POST", f"/v1/sessions/{session_id}/heartbeat"),
                                 ("GET", "/v1/info"), ("GET", "/v1/models")):
                status, seconds = timed(method, server.url + path)
                assert status == 200 and seconds < 1.0, (path, status, seconds)
        finally:
            release.set()
        answers = [f.result() for f in futures]
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    refused = [a for a in answers if a.status_code == 503]
    assert len(refused) >= CLICKS - MODEL_REQUESTS, statuses
    assert all(a.headers.get("Retry-After") and "maximum of 8" in a.json()["error"] for a in refused)
    assert statuses.count(200) >= 1
    requests.delete(f"{server.url}/v1/sessions/{session_id}", headers=AUTH, timeout=5)


def test_a_second_upload_is_refused_while_one_is_received(server: ThreadedServer, image: np.ndarray) -> None:
    body = wire.encode_frame(GEOMETRY, image[::-1].copy())
    started, finish = threading.Event(), threading.Event()

    def slow_body():  # noqa: ANN202 - chunked, the rest only once the test says so
        yield body[:100]
        started.set()
        finish.wait(20)
        yield body[100:]

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(requests.post, server.url + "/v1/images", data=slow_body(), headers=FRAME, timeout=30)
        try:
            assert started.wait(10)
            time.sleep(0.3)  # the first upload holds the only upload slot, waiting for its body
            second = requests.post(server.url + "/v1/images", data=wire.encode_frame(GEOMETRY, image), headers=FRAME,
                                   timeout=10)
            assert second.status_code == 503 and second.headers["Retry-After"], second.text
            assert "uploads" in second.json()["error"]
            assert timed("GET", server.url + "/v1/health")[0] == 200
        finally:
            finish.set()
        assert first.result().status_code in (200, 201), first.result().text
    assert upload(server, image)  # the slot is free again


def _forged_frame(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<4sBI", b"TSFM", 1, len(text)) + text + payload


def test_sizes_are_checked_before_inflating(server: ThreadedServer, image: np.ndarray) -> None:
    junk = b"\x78\x9c not a deflate stream at all"  # would fail to inflate if it were ever inflated
    # larger than the image store (8 MiB), though well under max_array_bytes
    big = {**GEOMETRY, "array": {"dtype": "int16", "shape": [65, 256, 256], "compression": "zlib"}}
    answer = requests.post(server.url + "/v1/images", data=_forged_frame(big, junk), headers=FRAME, timeout=10)
    assert answer.status_code == 413 and "image store" in answer.json()["error"], answer.text

    # a gzip payload whose trailer records another length than the shape needs
    header = {**GEOMETRY, "array": {"dtype": "int16", "shape": list(image.shape), "compression": "gzip"}}
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    payload = packer.compress(image[:8].tobytes()) + packer.flush()
    answer = requests.post(server.url + "/v1/images", data=_forged_frame(header, payload), headers=FRAME, timeout=10)
    assert answer.status_code == 400 and "gzip payload records" in answer.json()["error"], answer.text

    # a starting mask is checked against the session's image before it is inflated
    session_id = open_session(server, upload(server, image))
    seed = {"object_id": 1, "array": {"dtype": "uint8", "shape": [1024, 1024, 1024], "compression": "zlib"}}
    answer = requests.post(f"{server.url}/v1/sessions/{session_id}/interactions", data=_forged_frame(seed, junk),
                           headers=FRAME, timeout=10)
    assert answer.status_code == 400 and "starting mask has shape [1024, 1024, 1024]" in answer.json()["error"]

    # a JSON body is at most 1 MiB, whatever the frame limit
    answer = requests.post(server.url + "/v1/jobs", data=b"[" + b" " * (2 << 20) + b"]",
                           headers={**AUTH, "Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 413 and "not a frame" in answer.json()["error"], answer.text
    requests.delete(f"{server.url}/v1/sessions/{session_id}", headers=AUTH, timeout=5)


def test_the_undo_history_keeps_the_last_steps_of_each_object(server: ThreadedServer, image: np.ndarray) -> None:
    session_id = open_session(server, upload(server, image))
    url = f"{server.url}/v1/sessions/{session_id}"
    for object_id in (1, 2):
        for n in range(6):  # six different starting masks: six undoable changes
            mask = np.zeros(image.shape, np.uint8)
            mask[n: n + 4, 10:20, 10:20] = 1
            frame = wire.encode_frame({"object_id": object_id}, mask)
            answer = requests.post(url + "/interactions", data=frame, headers=FRAME, timeout=30)
            assert answer.status_code == 200, answer.text
    engine = server.services.sessions.get(session_id, active=False).engine
    assert [len(engine.objects[o].undo) for o in (1, 2)] == [3, 3]
    changed = []
    for _ in range(5):
        answer = requests.post(url + "/undo", json={"object_id": 1}, headers=AUTH, timeout=30)
        assert answer.status_code == 200
        changed.append(wire.decode_array(*_split(answer.content), 1 << 30).size > 0)
    assert changed == [True, True, True, False, False]  # three steps back, then nothing left to undo
    requests.delete(url, headers=AUTH, timeout=5)


def _split(body: bytes) -> tuple[dict, memoryview]:
    header, payload = wire.split_frame(body)
    return header["array"], payload


def test_the_openapi_schema_needs_the_token_and_no_docs_pages_are_served(server: ThreadedServer) -> None:
    assert requests.get(server.url + "/v1/openapi.json", timeout=5).status_code == 401
    assert requests.get(server.url + "/v1/openapi.json", headers={"Authorization": "Bearer wrong-token"},
                        timeout=5).status_code == 401
    schema = requests.get(server.url + "/v1/openapi.json", headers=AUTH, timeout=5)
    assert schema.status_code == 200 and "/v1/sessions/{session_id}/interactions" in schema.json()["paths"]
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        for headers in ({}, AUTH):
            assert requests.get(server.url + path, headers=headers, timeout=5).status_code == 404, path
    assert requests.get(server.url + "/v1/health", timeout=5).status_code == 200  # the one open route


@pytest.mark.parametrize("name", ["max_model_requests", "max_uploads", "max_undo_steps"])
def test_the_new_limits_must_be_positive(name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings(**{name: 0})
    assert Settings().public_limits()[name] >= 1
