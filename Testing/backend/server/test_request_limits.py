"""Schema-valid extremes on a real loopback server: each is refused with a 4xx naming the limit, before it
costs anything, and a refused request changes nothing (a session whose image was evicted included)."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import requests
from support.live_server import TEST_TOKEN as TOKEN
from support.live_server import ThreadedServer, backend_app
from tsfm_backend.server import wire

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FRAME = {**AUTH, "Content-Type": wire.MEDIA_TYPE}
SHAPE = (24, 80, 80)  # larger than tiny-stunet's 16 x 64 x 64 patch, so the step decides the window count
IMAGE_BYTES = int(np.prod(SHAPE)) * 2  # int16
MAX_WINDOWS = 2000


@pytest.fixture(scope="module")
def limited(model_paths):  # noqa: ANN001, ANN201 - ThreadedServer with .services
    # The image store holds one test image: uploading a second one evicts the first.
    app, services = backend_app(model_paths, token=TOKEN, max_windows=MAX_WINDOWS,
                                image_store_bytes=IMAGE_BYTES + IMAGE_BYTES // 2, max_request_bytes=8 << 20)
    with ThreadedServer(app) as server:
        server.services = services
        yield server


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-200, 300, SHAPE).astype(np.int16)


def _upload(live: ThreadedServer, array: np.ndarray, **geometry: object) -> requests.Response:
    header = {"spacing": [1.0, 1.0, 1.0], **geometry}
    return requests.post(live.url + "/v1/images", data=wire.encode_frame(header, array), headers=FRAME, timeout=10)


def _session(live: ThreadedServer, seed: int) -> tuple[str, str]:
    image_id = _upload(live, _image(seed)).json()["image_id"]
    created = requests.post(live.url + "/v1/sessions", json={"image_id": image_id, "model": "tiny-click"},
                            headers=AUTH, timeout=30)
    assert created.status_code == 201, created.text
    return image_id, created.json()["session_id"]


def _raw_frame(header_text: str) -> bytes:
    encoded = header_text.encode("utf-8")
    return struct.pack("<4sBI", wire.MAGIC, wire.FORMAT_VERSION, len(encoded)) + encoded


@pytest.mark.parametrize("step", [0.001, 1e-300, 5e-324])
def test_a_tiny_step_is_refused_at_once_and_the_server_stays_responsive(limited: ThreadedServer, step: float) -> None:
    image_id = _upload(limited, _image(1)).json()["image_id"]
    started = time.monotonic()
    answer = requests.post(limited.url + "/v1/jobs", headers=AUTH, timeout=10,
                           json={"image_id": image_id, "model": "tiny-stunet", "options": {"step": step}})
    assert answer.status_code == 413, answer.text
    message = answer.json()["error"]
    assert f"options.step {step:g} asks for" in message
    assert f"at most {MAX_WINDOWS:,} are allowed (settings.max_windows)" in message
    assert limited.services.jobs.count("queued") == 0 and limited.services.jobs.count("running") == 0
    # Nothing was queued, so session creation (model work on the same worker) answers straight away.
    created = requests.post(limited.url + "/v1/sessions", json={"image_id": image_id, "model": "tiny-click"},
                            headers=AUTH, timeout=10)
    assert created.status_code == 201
    requests.delete(f"{limited.url}/v1/sessions/{created.json()['session_id']}", headers=AUTH, timeout=5)
    assert time.monotonic() - started < 10
    assert requests.get(limited.url + "/v1/info", headers=AUTH, timeout=5).json()["limits"]["max_windows"] == MAX_WINDOWS


@pytest.mark.parametrize(("geometry", "field", "message"), [
    ({"spacing": [5e-324, 1.0, 1.0]}, "spacing", "spacing along I is 4.94066e-324 mm; this server takes 0.01 to 100 mm"),
    ({"spacing": [1.0, 0.005, 1.0]}, "spacing", "spacing along J is 0.005 mm"),
    ({"spacing": [1.0, 1.0, 1000.0]}, "spacing", "spacing along K is 1000 mm"),
    ({"origin": [0.0, 1e300, 0.0]}, "origin.1", "less than or equal to 1000000"),
    ({"direction": [1, 0, 0, 0, 1, 0, 0, 0.5, 1]}, "direction", "not orthonormal"),
    ({"direction": [2, 0, 0, 0, 0.5, 0, 0, 0, 1]}, "direction", "not orthonormal"),  # |det| 1, not orthonormal
])
def test_impossible_geometry_is_refused_at_upload_naming_the_field(limited: ThreadedServer, geometry: dict,
                                                                   field: str, message: str) -> None:
    answer = _upload(limited, np.zeros((2, 3, 4), np.int16), **geometry)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error.startswith(f"image header: {field}") and message in error


def test_deep_or_huge_json_is_a_4xx_and_the_connection_stays_usable(limited: ThreadedServer) -> None:
    _, session_id = _session(limited, 2)
    path = f"{limited.url}/v1/sessions/{session_id}/interactions"
    deep = "[" * 5000 + "]" * 5000
    huge = '{"kind": "point", "point": [' + "1" * 5000 + ", 0, 0]}"
    with requests.Session() as http:
        for body, expected in ((deep, "nested too deeply"), (huge, "too many digits")):
            answer = http.post(path, data=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=10)
            assert answer.status_code == 422 and expected in answer.json()["error"], answer.text
            assert http.get(limited.url + "/v1/health", timeout=5).status_code == 200
        for header, expected in (('{"array": ' + deep + "}", "nested too deeply"),
                                 ('{"array": {"dtype": "uint8", "shape": [1' + "0" * 5000 + ", 1, 1]}}",
                                  "too many digits")):
            for url in (path, limited.url + "/v1/images"):
                answer = http.post(url, data=_raw_frame(header), headers=FRAME, timeout=10)
                assert answer.status_code == 400 and expected in answer.json()["error"], answer.text
        answer = http.post(limited.url + "/v1/jobs", data=deep, headers={**AUTH, "Content-Type": "application/json"},
                           timeout=10)
        assert 400 <= answer.status_code < 500
        assert http.get(limited.url + "/v1/health", timeout=5).status_code == 200


def _state(live: ThreadedServer, session_id: str) -> tuple[int, int, object, np.ndarray]:
    engine = live.services.sessions.get(session_id, active=False).engine
    state = engine.objects[1]
    return len(state.undo), len(state.redo), state.prompts, engine.mask(1)


def test_a_session_whose_image_was_evicted_refuses_every_change_and_keeps_its_state(limited: ThreadedServer) -> None:
    image_id, session_id = _session(limited, 3)
    base = f"{limited.url}/v1/sessions/{session_id}"
    seed = np.zeros(SHAPE, np.uint8)
    seed[10:14, 30:50, 30:50] = 1
    seeded = requests.post(base + "/interactions", data=wire.encode_frame({"object_id": 1}, seed), headers=FRAME,
                           timeout=30)
    assert seeded.status_code == 200, seeded.text
    clicked = requests.post(base + "/interactions", json={"kind": "point", "point": [12, 40, 40]}, headers=AUTH,
                            timeout=30)
    assert clicked.status_code == 200, clicked.text
    before = _state(limited, session_id)
    assert before[0] >= 1, "the seed is an undoable step"

    assert _upload(limited, _image(4)).status_code == 201
    assert image_id not in limited.services.images, "the store holds one image: the first was evicted"
    attempts = [
        ("interactions", {"json": {"kind": "point", "point": [5, 10, 10], "positive": False}}),
        ("interactions", {"data": wire.encode_frame({"object_id": 1}, np.zeros(SHAPE, np.uint8)),
                          "headers": FRAME}),
        ("undo", {"json": {"object_id": 1}}),
        ("redo", {"json": {"object_id": 1}}),
        ("reset", {"json": {"object_id": 1}}),
    ]
    for route, kwargs in attempts:
        answer = requests.post(f"{base}/{route}", **{"headers": AUTH, **kwargs}, timeout=30)
        assert answer.status_code in (404, 410), (route, answer.status_code, answer.text)
        assert "evicted" in answer.json()["error"] and "nothing was changed" in answer.json()["error"]
        after = _state(limited, session_id)
        assert after[:3] == before[:3], route
        np.testing.assert_array_equal(after[3], before[3])
