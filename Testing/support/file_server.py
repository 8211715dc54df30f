"""A real HTTP file server on loopback for download tests: Range requests, optional throttling, a log.

Nothing in the download tests leaves the machine: catalog entries point at this server. ``delay_s``
slows every ``chunk_bytes`` written, so a test can cancel a download while bytes still flow.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODEL_FILES = ["model.safetensors", "model.json"]  # what a model folder of ours holds


class FileServer(ThreadingHTTPServer):
    """Serves the files in ``root`` on 127.0.0.1 from a background thread; use as a context manager.

    Attributes:
        chunk_bytes, delay_s: the body is written ``chunk_bytes`` at a time with ``delay_s`` between.
        cut_after: when set, the next answer stops after that many bytes and the connection drops.
        requests: (path, Range header or None) of every GET, in order.
    """

    daemon_threads = True  # a throttled answer to a client that went away must not hold up the test's end

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.chunk_bytes = 64 << 10
        self.delay_s = 0.0
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        self._thread = threading.Thread(target=self.serve_forever, name="file-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def throttle(self, chunk_bytes: int, delay_s: float) -> None:
        self.chunk_bytes, self.delay_s = chunk_bytes, delay_s

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.server.root / self.path.lstrip("/")
        header = self.headers.get("Range")
        self.server.requests.append((self.path, header))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(re.match(r"bytes=(\d+)-", header).group(1)) if header else 0
        if header and start >= len(data):
            self.send_response(416)
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.server.cut_after is not None:
            body, self.server.cut_after = body[: self.server.cut_after], None
            self.wfile.write(body)
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        try:
            for offset in range(0, len(body), self.server.chunk_bytes):
                self.wfile.write(body[offset: offset + self.server.chunk_bytes])
                self.wfile.flush()
                if self.server.delay_s:
                    time.sleep(self.server.delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client cancelled


def serve_files(root: Path, source: Path, names: list[str]) -> FileServer:
    """A server (not started) whose root holds copies of ``names`` from ``source``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(source / name, root / name)
    return FileServer(root)


def catalog_files(server: FileServer, names: list[str], *, sha256: dict[str, str] | None = None) -> list[dict]:
    """Catalog ``files`` for files in the server's root: URL, real size and SHA-256 (or the one given)."""
    files = []
    for name in names:
        data = (server.root / name).read_bytes()
        digest = (sha256 or {}).get(name, hashlib.sha256(data).hexdigest())
        files.append({"name": name, "url": f"{server.url}/{name}", "size": len(data), "sha256": digest})
    return files


def catalog_entry(model_id: str, files: list[dict], **overrides: Any) -> dict:
    """One catalog entry (an automatic STU-Net under Apache-2.0 unless ``overrides`` say otherwise)."""
    return {"id": model_id, "title": f"{model_id} for tests", "family": "stunet", "format": "ours",
            "kind": "automatic", "license": "Apache-2.0", "redistributable": True,
            "homepage": "https://example.org/models", "files": files, **overrides}


def write_catalog(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"format_version": 1, "models": entries}), encoding="utf-8")
    return path
