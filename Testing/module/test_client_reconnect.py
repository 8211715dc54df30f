"""The client resends an idempotent request whose kept-alive connection was reset, and never an interaction.

A loopback socket server stands in for a backend that drops a kept-alive connection the moment the
next request arrives on it (what uvicorn does after it has answered a 500): it answers the first
request of every connection and resets the connection on the second one, so the failure is exact.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import threading
from collections.abc import Iterator

import pytest
from support.mini_slicer import MODULE_DIR

sys.path.insert(0, str(MODULE_DIR))

from TSFMSegmentationLib.client import BackendClient, BackendUnavailable  # noqa: E402

TIMEOUT_S = 5.0
POLL_S = 0.05


class ResettingServer:
    """Answers the first request of each connection with 200 JSON, resets the connection on the second."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(POLL_S)  # accept() wakes this often to notice the end of the test
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[str] = []  # request lines, in arrival order, each as the server saw it
        self._stop = threading.Event()
        self._active: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ResettingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        active = self._active
        if active is not None:
            # Wakes a read blocked on a connection the client keeps open (an unread answer is not pooled).
            with contextlib.suppress(OSError):
                active.shutdown(socket.SHUT_RDWR)
        self._thread.join(TIMEOUT_S)
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with connection:
                self._active = connection
                connection.settimeout(TIMEOUT_S)
                self._answer_once_then_reset(connection)

    def _answer_once_then_reset(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        for number in range(2):
            line = _read_request(reader)
            if line is None:
                return
            self.requests.append(line)
            if number == 1:
                # SO_LINGER 0: close() sends RST, as a server tearing the connection down does.
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            body = json.dumps({"status": "ok", "api_version": "1.0", "expires_in_s": 60.0}).encode()
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _read_request(reader) -> str | None:  # noqa: ANN001 - a socket file
    """The request line of one HTTP/1.1 request (headers and body consumed); None at end of stream."""
    try:
        line = reader.readline(65536)
        if not line:
            return None
        length = 0
        for _ in range(100):
            header = reader.readline(65536)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        reader.read(length)
        return line.decode("latin-1").strip()
    except OSError:
        return None


@pytest.fixture
def server() -> Iterator[ResettingServer]:
    with ResettingServer() as running:
        yield running


def test_idempotent_requests_are_resent_once_after_a_reset(server: ResettingServer) -> None:
    client = BackendClient(server.url, timeout=(TIMEOUT_S, TIMEOUT_S))
    try:
        assert client.health()["status"] == "ok"  # first request of connection 1
        assert client.info()["status"] == "ok"  # reset on connection 1, resent on connection 2
        assert client.heartbeat("a" * 32) == 60.0  # a POST, but safe to repeat: reset, resent on 3
        client.close_session("b" * 32)  # DELETE: reset on 3, resent on 4
    finally:
        client.close()
    assert server.requests == [
        "GET /v1/health HTTP/1.1",
        "GET /v1/info HTTP/1.1", "GET /v1/info HTTP/1.1",
        f"POST /v1/sessions/{'a' * 32}/heartbeat HTTP/1.1", f"POST /v1/sessions/{'a' * 32}/heartbeat HTTP/1.1",
        f"DELETE /v1/sessions/{'b' * 32} HTTP/1.1", f"DELETE /v1/sessions/{'b' * 32} HTTP/1.1",
    ]


def test_an_interaction_is_never_sent_twice(server: ResettingServer) -> None:
    client = BackendClient(server.url, timeout=(TIMEOUT_S, TIMEOUT_S))
    try:
        client.health()
        with pytest.raises(BackendUnavailable):
            client.interact("c" * 32, {"kind": "point", "point": [1, 2, 3]})
        client.health()  # a fresh connection, whose next request is reset again
        with pytest.raises(BackendUnavailable):
            client.undo("c" * 32)
    finally:
        client.close()
    interactions = [line for line in server.requests if "/interactions" in line]
    undos = [line for line in server.requests if "/undo" in line]
    assert len(interactions) == 1 and len(undos) == 1, server.requests
