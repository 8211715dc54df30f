"""The NNIA array format against the client's own codec, hostile bodies, and the protocol's limits and lease errors."""

from __future__ import annotations

import json
import socket
import struct

import httpx
import numpy as np
import pytest
from nnInteractive.inference.remote.serialization import pack_array, unpack_array
from support.live_server import TEST_TOKEN
from tsfm_backend.server.nninteractive import nnia

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(1, 3, 4, 10),
    np.random.default_rng(0).integers(-1000, 2000, (5, 7, 9)).astype(np.int16),
    np.zeros((4, 5, 6), dtype=np.uint8),
    np.eye(6, dtype=bool)[None],
])
def test_nnia_reads_and_writes_what_the_client_does(array: np.ndarray) -> None:
    np.testing.assert_array_equal(nnia.unpack(pack_array(array), max_bytes=1 << 20), array)
    ours = unpack_array(nnia.pack(array))
    assert ours.dtype == array.dtype
    np.testing.assert_array_equal(ours, array)


def test_hostile_arrays_are_refused_before_they_cost_memory() -> None:
    body = pack_array(np.ones((8, 8, 8), dtype=np.uint8))
    with pytest.raises(nnia.ArrayTooLarge):
        nnia.unpack(body, max_bytes=511)
    lying = bytearray(body)
    struct.pack_into("<3q", lying, 8 + len("uint8"), 1 << 20, 1 << 20, 1 << 20)  # declares 1 PiB
    with pytest.raises(nnia.ArrayTooLarge):
        nnia.unpack(bytes(lying), max_bytes=1 << 30)
    refused = [b"NNIA", b"XXXX" + body[4:], body[:-3], body + b"\0", body.replace(b"uint8", b"ob\0ct", 1),
               body[:4] + b"\x02" + body[5:], body[:5] + b"\x09" + body[6:]]
    for bad in refused:
        with pytest.raises(nnia.NNIAError):
            nnia.unpack(bad, max_bytes=1 << 20)


def declare_only(live, path: str, headers: dict[str, str], length: int) -> tuple[int, str]:  # noqa: ANN001
    """Send only the head of an octet-stream request declaring ``length`` bytes; (status, detail) of the answer."""
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{live.port}", "Content-Type: application/octet-stream",
             f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode())
        answer = b""
        while chunk := sock.recv(65536):  # the server closes the connection after a 413
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["detail"]


def claim(live) -> dict[str, str]:  # noqa: ANN001
    token = httpx.post(live.url_nni + "/claim", headers=AUTH).json()["lease_token"]
    return {**AUTH, "X-Lease-Token": token}


def test_leases_missing_unknown_or_released_answer_410_with_a_detail(live) -> None:  # noqa: ANN001
    assert httpx.get(live.url_nni + "/healthz").json() == {"ok": True}
    for headers in (AUTH, {**AUTH, "X-Lease-Token": "0" * 32}, {**AUTH, "X-Lease-Token": "../etc"}):
        answer = httpx.post(live.url_nni + "/heartbeat", headers=headers, json={})
        assert answer.status_code == 410 and "claim" in answer.json()["detail"]
    headers = claim(live)
    assert httpx.post(live.url_nni + "/release", headers=headers).json() == {"released": True}
    assert httpx.post(live.url_nni + "/release", headers=headers).json() == {"released": True}  # idempotent
    assert httpx.post(live.url_nni + "/heartbeat", headers=headers, json={}).status_code == 410


@pytest.mark.parametrize(("query", "keeps_alive"), [("lease_status", False), ("heartbeat", True)])
def test_only_a_heartbeat_keeps_an_idle_lease_alive(live, query: str, keeps_alive: bool) -> None:  # noqa: ANN001
    headers = claim(live)
    liveness, idle = live.services.settings.session_liveness_s, live.services.settings.session_idle_s
    try:
        live.clock.now += liveness - 1
        answer = httpx.request("GET" if query == "lease_status" else "POST", f"{live.url_nni}/{query}", headers=headers)
        assert answer.status_code == 200 and answer.json()["remaining_seconds"] == pytest.approx(idle - liveness + 1)
        live.clock.now += 2  # past the liveness of the claim, not of a renewal
        status = httpx.get(live.url_nni + "/lease_status", headers=headers)
        assert status.status_code == (200 if keeps_alive else 410), status.text
    finally:
        httpx.post(live.url_nni + "/release", headers=headers)


def test_arrays_may_exceed_the_v1_json_limit_but_not_the_servers_own(live, sarcoma_ct) -> None:  # noqa: ANN001
    headers = claim(live)
    try:
        noise = np.random.default_rng(1).integers(-1000, 1000, (1, 16, 256, 256)).astype(np.int16)  # 2 MiB, incompressible
        answer = httpx.post(live.url_nni + "/set_image", headers={**headers, "Content-Type": "application/octet-stream",
                                                                  "X-Meta": json.dumps({"image_properties": {}})},
                            content=pack_array(noise))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"original_image_shape": [1, 16, 256, 256]}
        status, detail = declare_only(live, "/nninteractive/add_scribble_interaction", headers, 17 << 20)
        assert status == 413 and "limit" in detail  # refused from its Content-Length, before the body
        answer = httpx.post(live.url_nni + "/add_point_interaction", headers=headers,
                            json={"coordinates": [0] * 600_000, "include_interaction": True})
        assert answer.status_code == 413  # a JSON body over 1 MiB
        answer = httpx.post(live.url_nni + "/add_point_interaction", headers=headers,
                            json={"coordinates": [1, 2], "include_interaction": True})
        assert answer.status_code == 422 and "coordinates" in answer.json()["detail"]
        assert httpx.get(live.url + "/v1/health").status_code == 200  # /v1 is untouched
    finally:
        httpx.post(live.url_nni + "/release", headers=headers)
