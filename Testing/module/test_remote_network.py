"""A remote backend behind an institution's network: an HTTP proxy and a private certificate authority.

The backend is a real ``tsfm-backend serve``; in front of it stand a real forward proxy and a real TLS
endpoint (a self-signed certificate made with openssl), both on loopback threads of this test.
"""

from __future__ import annotations

import http.client
import http.server
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.mini_slicer import MODULE_DIR

sys.path.insert(0, str(MODULE_DIR))

from TSFMSegmentationLib.backend_process import LOOPBACK, LocalBackend, free_port  # noqa: E402
from TSFMSegmentationLib.client import BackendUnavailable  # noqa: E402
from TSFMSegmentationLib.logic_connection import Connection  # noqa: E402

MODEL = "sts-click-small"
# A name under the reserved .test domain: only the proxy knows where it is.
REMOTE_NAME = "tsfm-backend.test"
_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    backend = LocalBackend(python=sys.executable, device="cpu", extra_args=["--models", MODEL],
                           env={"TSFM_HOME": str(tmp_path_factory.mktemp("home")), "OMP_NUM_THREADS": "1"})
    backend.start(timeout_s=120)
    yield backend
    backend.stop()


class ForwardProxy(http.server.ThreadingHTTPServer):
    """An HTTP forward proxy that sends every request to one loopback port and records what it relayed."""

    daemon_threads = True

    def __init__(self, target_port: int) -> None:
        super().__init__((LOOPBACK, 0), _ProxyHandler)
        self.target_port = target_port
        self.relayed: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}"

    def __enter__(self) -> ForwardProxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: ForwardProxy

    def _relay(self) -> None:
        # A client talking to a proxy sends the absolute URL of the target in the request line.
        self.server.relayed.append(f"{self.command} {self.path}")
        target = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {key: value for key, value in self.headers.items() if key.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(LOOPBACK, self.server.target_port, timeout=60)
        upstream.request(self.command, target.path + (f"?{target.query}" if target.query else ""), body, headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = do_DELETE = _relay

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


class TlsFront:
    """Accepts TLS on a loopback port with the given certificate and pipes the plain bytes to another port."""

    def __init__(self, target_port: int, certificate: Path, key: Path) -> None:
        self.target_port = target_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(certificate), str(key))
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]

    def __enter__(self) -> TlsFront:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # the client did not trust the certificate and hung up during the handshake
            return
        upstream = socket.create_connection((LOOPBACK, self.target_port))
        threading.Thread(target=_pipe, args=(upstream, secure), daemon=True).start()
        _pipe(secure, upstream)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        source.close()
        sink.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate, key): self-signed for 127.0.0.1, so the certificate is its own CA bundle."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    certificate, key = folder / "ca.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True, timeout=60)
    return certificate, key


def test_a_remote_backend_is_reached_through_the_proxy(served: LocalBackend) -> None:
    url = f"http://{REMOTE_NAME}:{served.port}"
    with ForwardProxy(served.port) as proxy:
        connection = Connection()
        info = connection.connect_remote(url, token="t0ken", proxy=proxy.url)
        assert info["models"] == [MODEL]
        assert [model["id"] for model in connection.require().models()] == [MODEL]
        assert proxy.relayed == [f"GET {url}/v1/health", f"GET {url}/v1/info", f"GET {url}/v1/models"]
        connection.disconnect()


def test_a_proxy_nobody_listens_on_is_named_without_its_password() -> None:
    port = free_port()
    with pytest.raises(BackendUnavailable) as failure:
        Connection().connect_remote(f"http://{REMOTE_NAME}:8765", proxy=f"http://nurse:s3cret@{LOOPBACK}:{port}")
    message = str(failure.value)
    assert f"through the proxy http://{LOOPBACK}:{port}" in message
    assert "s3cret" not in message


def test_a_loopback_backend_never_goes_through_the_proxy(served: LocalBackend) -> None:
    closed_proxy = f"http://{LOOPBACK}:{free_port()}"
    connection = Connection()
    assert connection.connect_remote(served.url, proxy=closed_proxy)["models"] == [MODEL]
    connection.disconnect()


def test_a_private_certificate_authority_is_trusted_only_when_given(served: LocalBackend,
                                                                  certificate: tuple[Path, Path]) -> None:
    ca_bundle, key = certificate
    with TlsFront(served.port, ca_bundle, key) as front:
        url = f"https://{LOOPBACK}:{front.port}"
        with pytest.raises(BackendUnavailable, match=r"(?s)secure connection to https://.*certificate verify "
                                                     r"failed.*CA bundle"):
            Connection().connect_remote(url)
        connection = Connection()
        assert connection.connect_remote(url, ca_bundle=str(ca_bundle))["models"] == [MODEL]
        connection.disconnect()
