"""Fuzz: hundreds of malformed requests against the real server; none may get a 5xx, and it keeps serving.

Cases are generated from a fixed seed (reproducible): truncated and bit-flipped frames, wrong dtypes
and shapes, NaN/Inf voxels and geometry, absurd sizes, broken JSON, wrong types, out-of-range
prompts, unknown and path-like ids, wrong methods and content types.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from collections.abc import Iterator

import numpy as np
import requests
from support.live_server import TEST_TOKEN as TOKEN
from support.live_server import ThreadedServer
from tsfm_backend.server import wire

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FRAME = {"Content-Type": wire.MEDIA_TYPE}
Case = tuple[str, str, dict]  # method, path, requests keyword arguments


def _raw_frame(header: object, payload: bytes) -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<4sBI", b"TSFM", 1, len(text)) + text + payload


def image_cases(rng: np.random.Generator, ct: np.ndarray) -> Iterator[Case]:
    crop = np.ascontiguousarray(ct[:8, :32, :32])
    geometry = {"spacing": [3.0, 3.0, 3.0], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    good = wire.encode_frame(geometry, crop)
    post = lambda body: ("POST", "/v1/images", {"data": body, "headers": FRAME})  # noqa: E731
    for cut in rng.integers(0, len(good) - 1, 60):
        yield post(good[:cut])
    for _ in range(30):
        flipped = bytearray(good)
        for position in rng.integers(9, len(good), 4):
            flipped[position] ^= 0xFF
        yield post(bytes(flipped))
    for _ in range(10):
        yield post(rng.bytes(int(rng.integers(0, 4096))))
    meta = {"dtype": "int16", "shape": [8, 32, 32], "compression": "zlib"}
    payload = zlib.compress(crop.tobytes())
    for dtype in ("complex128", "object", "float16", "int64", "bool", "<U4", "", None, 7, "uint8"):
        yield post(_raw_frame({**geometry, "array": {**meta, "dtype": dtype}}, payload))
    for shape in ([8, 32], [8, 32, 32, 1], [8, -32, 32], [1e6, 1e6, 1e6], [2**40, 1, 1], [0, 32, 32], "8x32x32",
                  [8.5, 32, 32], [True, 32, 32], [4, 32, 32], [8, 32, 33], None):
        yield post(_raw_frame({**geometry, "array": {**meta, "shape": shape}}, payload))
    for bad in (float("nan"), float("inf"), -float("inf")):
        voxels = crop.astype(np.float32)
        voxels[3, 3, 3] = bad
        yield post(wire.encode_frame(geometry, voxels))
    for field, value in (("spacing", [0, 1, 1]), ("spacing", [-1, 1, 1]), ("spacing", [1, 1]),
                         ("spacing", ["a", 1, 1]), ("spacing", [1e300, 1, 1]), ("origin", [1, 2]),
                         ("direction", [1, 0, 0]), ("direction", [2, 0, 0, 0, 2, 0, 0, 0, 2]),
                         ("direction", [0] * 9), ("spacing", None), ("unknown_field", 1)):
        yield post(_raw_frame({**geometry, field: value, "array": meta}, payload))
    for text in (b"NaN", b"[]", b"{\"array\": 5}", b"{", b"\xff\xfe", b"null", b"{\"spacing\": [NaN, 1, 1], \"array\": {}}"):
        yield post(_raw_frame(text, payload))
    yield post(_raw_frame({**geometry, "array": {**meta, "compression": "none"}}, payload))
    yield post(_raw_frame({**geometry, "array": {**meta, "compression": "gzip"}}, payload))
    yield post(_raw_frame({**geometry, "array": {**meta, "compression": "bz2"}}, payload))
    yield post(struct.pack("<4sBI", b"TSFM", 1, 2**32 - 1) + b"{}")
    yield post(struct.pack("<4sBI", b"TSFM", 0, 2) + b"{}")
    yield ("POST", "/v1/images", {"data": good, "headers": {"Content-Type": "application/json"}})
    yield ("POST", "/v1/images", {"json": geometry})


def json_cases(rng: np.random.Generator, image_id: str, session_id: str) -> Iterator[Case]:
    base = f"/v1/sessions/{session_id}"
    bodies: list[object] = [None, [], "", 0, "x", {"image_id": image_id}, {"model": "tiny-stunet"},
                            {"image_id": image_id, "model": 5}, {"image_id": 5, "model": "tiny-stunet"},
                            {"image_id": image_id.upper(), "model": "tiny-stunet"},
                            {"image_id": image_id, "model": "tiny-stunet", "options": []},
                            {"image_id": image_id, "model": "tiny-stunet", "options": {"step": "half"}},
                            {"image_id": image_id, "model": "tiny-stunet", "options": {"batch_size": 10**9}},
                            {"image_id": image_id, "model": "tiny-stunet", "options": {"step": -1}},
                            {"image_id": image_id, "model": "tiny-stunet", "options": {"tta": "yes please"}},
                            {"image_id": image_id, "model": "tiny-stunet", "extra": 1},
                            {"image_id": image_id, "model": "/etc/passwd"}, {"image_id": image_id, "model": ""},
                            {"image_id": image_id, "model": "x" * 10_000}]
    for route in ("/v1/jobs", "/v1/sessions"):
        for body in bodies:
            yield ("POST", route, {"json": body})
        for text in (b"{", b"{\"image_id\": ", b"\x00\x01", b"[1, 2", b"{\"a\": NaN}", "{\"é\": 1".encode(), b"1e999"):
            yield ("POST", route, {"data": text, "headers": {"Content-Type": "application/json"}})
    interactions: list[object] = [
        None, [], {}, {"kind": "lasso", "point": [1, 1, 1]}, {"kind": "point"}, {"kind": "box"},
        {"kind": "point", "point": [1, 1]}, {"kind": "point", "point": [1, 1, 1, 1]},
        {"kind": "point", "point": [-1, 5, 5]}, {"kind": "point", "point": [30, 5, 5]},
        {"kind": "point", "point": [5, 101, 5]}, {"kind": "point", "point": [5, 5, 122]},
        {"kind": "point", "point": [10**12, 5, 5]}, {"kind": "point", "point": [1.5, 5, 5]},
        {"kind": "point", "point": ["a", 5, 5]}, {"kind": "point", "point": [None, 5, 5]},
        {"kind": "point", "point": [5, 5, 5], "box": [[1, 1, 1], [2, 2, 2]]},
        {"kind": "point", "point": [5, 5, 5], "object_id": 0}, {"kind": "point", "point": [5, 5, 5], "object_id": 256},
        {"kind": "point", "point": [5, 5, 5], "object_id": -3}, {"kind": "point", "point": [5, 5, 5], "positive": "no"},
        {"kind": "box", "box": [[1, 1, 1]]}, {"kind": "box", "box": [[5, 5, 5], [5, 5, 5]]},
        {"kind": "box", "box": [[9, 9, 9], [1, 1, 200]]}, {"kind": "box", "box": [[0, 0, 0], [40, 200, 200]]},
        {"kind": "box", "box": [[-5, 0, 0], [3, 3, 3]]}, {"kind": "point", "point": [5, 5, 5], "mask": "x"},
    ]
    for _ in range(3):
        for body in interactions:
            yield ("POST", base + "/interactions", {"json": body})
    for _ in range(40):
        junk = {"kind": rng.choice(["point", "box", "p", ""]),
                # a negative first index keeps every junk prompt invalid, whatever else it holds
                "point": [int(rng.integers(-50, 0))] + [int(v) for v in rng.integers(-50, 300, int(rng.integers(0, 4)))],
                "object_id": int(rng.integers(-3, 300))}
        yield ("POST", base + "/interactions", {"json": junk})
    seed_meta = {"dtype": "uint8", "shape": [30, 101, 122], "compression": "zlib"}
    seed = zlib.compress(np.ones((30, 101, 122), np.uint8).tobytes())
    for header, payload in (({"array": seed_meta}, seed[:100]), ({"array": {**seed_meta, "dtype": "float32"}}, seed),
                            ({"array": {**seed_meta, "shape": [30, 101, 121]}}, seed),
                            ({"array": seed_meta, "object_id": 0}, seed), ({"array": seed_meta, "extra": 1}, seed),
                            ({"array": seed_meta, "interaction": {"kind": "point"}}, seed),
                            ({"array": seed_meta, "object_id": 2, "interaction": {"kind": "point", "point": [1, 1, 1]}, "x": 0},
                             seed)):
        yield ("POST", base + "/interactions", {"data": _raw_frame(header, payload), "headers": FRAME})
    yield ("POST", base + "/interactions", {"data": b"garbage", "headers": FRAME})
    for route in ("/undo", "/redo", "/reset"):
        for body in (None, [], {"object_id": 0}, {"object_id": "one"}, {"object_id": 1.5}, {"object_id": 300},
                     {"object_id": 99}, {"object": 1}, "x"):
            yield ("POST", base + route, {"json": body})
    yield ("POST", base + "/heartbeat", {"json": {"unexpected": True}})


def id_cases(rng: np.random.Generator) -> Iterator[Case]:
    ids = ["0" * 32, "f" * 32, "F" * 32, "0" * 31, "0" * 33, "..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e",
           "~root", "%00", "a%0Ab", "x" * 5000, "é" * 10, "1;DROP TABLE", "../../../../etc/shadow",
           "C:%5CWindows", "%25", "null", "-1", "g" * 32]
    ids += ["".join(rng.choice(list("0123456789abcdefxyz/.%"), 32)) for _ in range(10)]
    for identifier in ids:
        yield ("GET", f"/v1/jobs/{identifier}", {})
        yield ("GET", f"/v1/jobs/{identifier}/result", {})
        yield ("DELETE", f"/v1/jobs/{identifier}", {})
        yield ("HEAD", f"/v1/images/{identifier}", {})
        yield ("POST", f"/v1/sessions/{identifier}/interactions", {"json": {"kind": "point", "point": [1, 1, 1]}})
        yield ("POST", f"/v1/sessions/{identifier}/undo", {"json": {"object_id": 1}})
        yield ("DELETE", f"/v1/sessions/{identifier}", {})
    for method, path in (("PUT", "/v1/jobs"), ("PATCH", "/v1/images"), ("DELETE", "/v1/health"),
                         ("GET", "/v1/sessions"), ("GET", "/v2/health"), ("GET", "/"), ("POST", "/v1/info"),
                         ("GET", "/v1/images"), ("TRACE", "/v1/health"), ("GET", "/v1/../etc/passwd")):
        yield (method, path, {})


def test_malformed_requests_never_get_a_5xx_and_the_server_keeps_serving(live: ThreadedServer, client,  # noqa: ANN001
                                                                         small_ct) -> None:  # noqa: ANN001
    rng = np.random.default_rng(20261123)
    image_id = client.upload_image(*small_ct)
    session_id = client.create_session(image_id, "tiny-click")
    cases = [*image_cases(rng, small_ct[0]), *json_cases(rng, image_id, session_id), *id_cases(rng)]
    assert len(cases) >= 500
    http = requests.Session()
    http.headers.update(AUTH)
    statuses: Counter[int] = Counter()
    failures = []
    for method, path, kwargs in cases:
        answer = http.request(method, live.url + path, timeout=60, **kwargs)
        statuses[answer.status_code] += 1
        if answer.status_code >= 500:
            failures.append(f"{method} {path} -> {answer.status_code} {answer.text[:200]}")
        elif answer.status_code >= 400 and method != "HEAD":
            assert answer.json().get("error"), (method, path, answer.text[:200])
    assert not failures, "\n".join(failures[:20])
    assert sum(statuses[s] for s in statuses if 400 <= s < 500) >= 450, statuses
    assert http.get(live.url + "/v1/health", timeout=5).status_code == 200
    origin, mask = client.interact(session_id, {"kind": "point", "point": [15, 50, 60]})
    assert mask.dtype == np.uint8
    client.close_session(session_id)
