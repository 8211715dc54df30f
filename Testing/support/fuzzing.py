"""Hostile requests for a running backend server: hand-written cases and cases generated from its own
OpenAPI schema (with schemathesis). Shared by the fuzz test and ``Testing/bench/fuzz_server.py``.

Every case is one HTTP request. ``send`` records the status and how long the answer took; a 5xx is a
failure unless it is a 503 that carries Retry-After (capacity, by design). Nothing here reaches
beyond the server's own URL.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import requests

FRAME_TYPE = "application/vnd.tsfm.frame"
Case = tuple[str, str, dict]  # method, path, requests keyword arguments


@dataclass
class Tally:
    """What a fuzz run saw: statuses, failures (5xx, a 4xx without ``error``) and the slowest answer."""

    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    slowest: tuple[float, str] = (0.0, "")

    def record(self, label: str, answer: requests.Response, seconds: float) -> None:
        self.sent += 1
        self.statuses[answer.status_code] += 1
        if seconds > self.slowest[0]:
            self.slowest = (seconds, label)
        status = answer.status_code
        if status >= 500 and not (status == 503 and answer.headers.get("Retry-After")):
            self.failures.append(f"{label} -> {status} {answer.text[:200]}")
        elif 400 <= status < 500 and answer.request.method != "HEAD":
            try:
                message = answer.json().get("error")
            except ValueError:
                message = None
            if not message:
                self.failures.append(f"{label} -> {status} without an error message: {answer.text[:200]}")

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


def send(http: requests.Session, url: str, case: Case, tally: Tally, timeout_s: float = 30.0) -> None:
    method, path, kwargs = case
    started = time.monotonic()
    try:
        answer = http.request(method, url + path, timeout=timeout_s, **kwargs)
    except requests.ConnectionError as error:  # the server dropped the connection: as bad as a 5xx
        tally.sent += 1
        tally.failures.append(f"{method} {path[:80]} -> connection dropped: {error}")
        return
    tally.record(f"{method} {path[:80]}", answer, time.monotonic() - started)


def raw_frame(header: bytes | object, payload: bytes, header_length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(text) if header_length is None else header_length
    return struct.pack("<4sBI", b"TSFM", 1, length) + text + payload


def hostile_cases(image_id: str, session_id: str) -> Iterator[Case]:
    """Deep JSON, huge integers, wrong content types, truncated frames and absurd numbers on every route."""
    session = f"/v1/sessions/{session_id}"
    as_json = {"Content-Type": "application/json"}
    as_frame = {"Content-Type": FRAME_TYPE}
    deep = [b"[" * 100_000, b'{"a":' * 50_000, b"[" * 100_000 + b"]" * 100_000, b"[" * 1_000 + b"1" + b"]" * 1_000]
    huge = [b"9" * 5_000, b"-" + b"9" * 100_000, b'{"object_id": ' + b"1" * 4_400 + b"}",
            b'{"kind": "point", "point": [' + b"7" * 5_000 + b', 1, 1]}', b"1e999999", b"-1e-999999",
            b'{"image_id": "' + b"a" * 32 + b'", "model": "tiny-stunet", "options": {"step": 1e-320}}',
            b'{"object_id": 1' + b"0" * 30 + b"}"]
    json_routes = ["/v1/jobs", "/v1/sessions", "/v1/downloads", session + "/interactions", session + "/undo",
                   session + "/redo", session + "/reset"]
    for route in json_routes:
        for body in deep + huge:
            yield ("POST", route, {"data": body, "headers": as_json})
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                             "application/xml", FRAME_TYPE, "", "application/json; charset=latin-1"):
            yield ("POST", route, {"data": b'{"object_id": 1}', "headers": {"Content-Type": content_type}})
        yield ("POST", route, {"files": {"file": ("a.json", b"{}")}})
        yield ("POST", route, {"data": {"object_id": "1"}})
    geometry = {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    meta = {"dtype": "uint8", "shape": [4, 4, 4], "compression": "zlib"}
    payload = zlib.compress(bytes(64))
    frames = [
        raw_frame(geometry | {"array": meta}, payload)[:n] for n in (0, 3, 4, 8, 9, 20)
    ] + [
        raw_frame(geometry | {"array": meta}, payload, header_length=10_000),  # header runs past the body
        raw_frame(geometry | {"array": meta}, payload, header_length=2**32 - 1),
        raw_frame(geometry | {"array": meta}, payload[:5]),  # payload cut
        raw_frame(geometry | {"array": meta}, payload + b"trailing"),
        raw_frame(b"[" * 60_000, payload), raw_frame(b'{"array": ' * 6_000, payload),
        raw_frame(b'{"array": {"dtype": "uint8", "shape": [' + b"9" * 5_000 + b', 1, 1]}}', payload),
        raw_frame(geometry | {"array": {**meta, "shape": [2**62, 2**62, 2**62]}}, payload),
        raw_frame(geometry | {"array": {**meta, "shape": [1 << 20, 1 << 20, 1 << 20]}}, payload),
        raw_frame(geometry | {"array": {**meta, "dtype": "float64"}}, b"\xff" * 512),
        raw_frame(geometry | {"array": {**meta, "compression": "gzip"}}, b"\x1f\x8b" + b"\0" * 20),
        raw_frame(geometry | {"array": {**meta, "compression": "none"}}, bytes(63)),
        raw_frame(b'{"spacing": [1e308, 1e308, 1e308], "array": {"dtype": "uint8", "shape": [4, 4, 4]}}', payload),
        raw_frame(b'{"spacing": [Infinity, 1, 1], "array": {"dtype": "uint8", "shape": [4, 4, 4]}}', payload),
        raw_frame(b'{"spacing": [-0.0, 1, 1], "array": {"dtype": "uint8", "shape": [4, 4, 4]}}', payload),
        raw_frame(geometry | {"origin": [1e300, -1e300, 0], "array": meta}, payload),
        raw_frame(geometry | {"direction": [1e-300] * 9, "array": meta}, payload),
        raw_frame({"object_id": 2**64, "array": meta}, payload),
        raw_frame({"object_id": 1, "interaction": {"kind": "point", "point": [2**70, 0, 0]}, "array": meta}, payload),
        b"TSFM", b"\0" * 9, b"GIF89a" + bytes(100),
    ]
    for body in frames:
        yield ("POST", "/v1/images", {"data": body, "headers": as_frame})
        yield ("POST", session + "/interactions", {"data": body, "headers": as_frame})
    for body in ({"image_id": image_id, "model": "tiny-stunet", "options": {"step": 1e-300}},
                 {"image_id": image_id, "model": "tiny-stunet", "options": {"batch_size": 2**63}},
                 {"image_id": image_id, "model": "tiny-stunet", "options": {"step": -0.0}},
                 {"image_id": image_id, "model": "tiny-stunet", "options": {"step": 5e-324}}):
        yield ("POST", "/v1/jobs", {"json": body})
    for point in ([2**31, 0, 0], [-(2**63), 0, 0], [1e308, 1, 1], [0.1, 0, 0], [2**1000, 0, 0]):
        yield ("POST", session + "/interactions",
               {"data": json.dumps({"kind": "point", "point": point}).encode(), "headers": as_json})
    yield ("POST", session + "/interactions", {"json": {"kind": "box", "box": [[0, 0, 0], [2**40, 2**40, 2**40]]}})
    for path in ("/v1/jobs/" + "0" * 10_000, "/v1/images/" + "%" * 300, "/v1/" + "a/" * 2_000,
                 "/v1/health?" + "x=1&" * 2_000, "/v1/sessions/" + "0" * 32 + "/heartbeat?" + "a" * 8_000):
        yield ("GET", path, {})
        yield ("POST", path, {"json": {}})
    yield ("GET", "/v1/info", {"headers": {"Authorization": "Bearer " + "x" * 10_000}})
    yield ("GET", "/v1/info", {"headers": {"Authorization": "Basic dXNlcjpwYXNz"}})
    yield ("OPTIONS", "/v1/jobs", {})


def schema_cases(schema: dict, url: str, headers: dict, examples_per_operation: int, deadline: float,
                 tally: Tally, path_parameters: dict[str, str] | None = None, seed: int = 0) -> None:
    """Send cases schemathesis generates from ``schema`` (positive and negative) to ``url``.

    Each operation gets ``examples_per_operation`` examples per mode, half of them (where the path has
    such parameters) with ``path_parameters`` filled in (real ids reach the deeper checks); nothing is
    sent after ``deadline`` (``time.monotonic()``).
    """
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation import GenerationMode

    loaded = schemathesis.openapi.from_dict(schema)
    http = requests.Session()
    operations = [result.ok() for result in loaded.get_all_operations()]
    for operation in operations:
        names = {p.name for p in operation.path_parameters}
        fixed = {k: v for k, v in (path_parameters or {}).items() if k in names}
        variants = [None, fixed] if fixed else [None]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for parameters in variants:
                strategy = operation.as_strategy(generation_mode=mode, path_parameters=parameters or None)
                count = max(1, examples_per_operation // len(variants))
                check = _sender(strategy, count, seed, deadline, http, url, headers, tally,
                                f"{operation.path} ({mode.value})")
                try:
                    check()
                except Unsatisfiable:
                    continue  # e.g. no invalid request exists for an operation without parameters


def _sender(strategy, count: int, seed: int, deadline: float, http: requests.Session, url: str,  # noqa: ANN001, ANN202
            headers: dict, tally: Tally, label: str):
    """A Hypothesis test that sends ``count`` cases drawn from ``strategy`` (none after ``deadline``)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case) -> None:  # noqa: ANN001
        if time.monotonic() > deadline:
            return
        kwargs = case.as_transport_kwargs(base_url=url, headers=headers)
        method, target = kwargs.pop("method"), kwargs.pop("url")
        kwargs.pop("timeout", None)
        started = time.monotonic()
        try:
            answer = http.request(method, target, timeout=30, **kwargs)
        except requests.ConnectionError as error:
            tally.sent += 1
            tally.failures.append(f"{method} {label} -> connection dropped: {error}")
            return
        tally.record(f"{method} {label}", answer, time.monotonic() - started)

    return check


def make_image(shape: tuple[int, int, int] = (16, 48, 48), seed: int = 0) -> np.ndarray:
    """A small CT-like int16 volume: soft tissue with a bright blob."""
    rng = np.random.default_rng(seed)
    array = rng.normal(40, 10, shape).astype(np.int16)
    k, j, i = (s // 2 for s in shape)
    array[k - 3:k + 3, j - 6:j + 6, i - 6:i + 6] = 300
    return array
