"""Which backend the module talks to: a local server it starts, or a remote one at a URL with a token.

Both end in the same ``BackendClient``; nothing after connecting knows which it is, except that a
remote backend asks before any patient image leaves the machine (``confirm_upload``). The token is
kept in memory only: it is never written to the scene, the parameter node or the settings.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from .backend_process import LOOPBACK, LocalBackend
from .client import BackendClient, BackendError

LOCAL, REMOTE = "local", "remote"


class UploadDeclined(BackendError):
    """The user did not allow sending the image to a remote server."""


def validate_url(url: str) -> str:
    """``http(s)://host[:port]`` without a path; anything else is refused with the reason."""
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"backend URL must look like http://host:8765 or https://host, not {url!r}")
    if parsed.path not in ("", "/") or parsed.query:
        raise ValueError(f"backend URL must not contain a path or query: {url!r}")
    return f"{parsed.scheme}://{parsed.netloc}"


def is_loopback(url: str) -> bool:
    return urlparse(url).hostname in (LOOPBACK, "localhost", "::1")


def describe_info(info: dict[str, Any]) -> tuple[str, str]:
    """(one-line summary of device, GPU and versions, warning or "") from ``/v1/info``."""
    device = info.get("device", {}) or {}
    name = device.get("name") or device.get("type") or "unknown device"
    memory = device.get("memory_gb") or device.get("total_memory_gb")
    versions = info.get("versions", {}) or {}
    version_text = ", ".join(f"{key} {value}" for key, value in sorted(versions.items()) if value)
    summary = f"{name}" + (f" ({memory:.0f} GB)" if isinstance(memory, (int, float)) else "")
    if version_text:
        summary += f"; {version_text}"
    on_cpu = str(device.get("type", "")).lower() == "cpu" or name.lower().startswith("cpu")
    warning = ("The backend runs on the CPU: automatic segmentation can take minutes and each click "
               "seconds. Use a CUDA GPU (local or remote) for interactive speed.") if on_cpu else ""
    return summary, warning


@dataclass
class Connection:
    """The current backend. ``confirm_upload(url) -> bool`` is asked once per remote URL."""

    confirm_upload: Callable[[str], bool] = lambda url: False
    mode: str = ""
    client: BackendClient | None = None
    local: LocalBackend | None = None
    _allowed_uploads: set[str] = field(default_factory=set)

    def connect_local(self, python: str = sys.executable, device: str = "auto", timeout_s: float = 180.0,
                      extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                      on_wait: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Start (or reuse) a local server with ``python`` and return its ``/v1/info``."""
        self.disconnect()
        self.local = LocalBackend(python=python, device=device, extra_args=extra_args, env=env)
        url = self.local.start(timeout_s=timeout_s, on_wait=on_wait)
        self.mode, self.client = LOCAL, BackendClient(url)
        self.client.health()
        return self.client.info()

    def connect_remote(self, url: str, token: str | None = None) -> dict[str, Any]:
        """Use a server elsewhere; checks that it answers and speaks our API, returns ``/v1/info``."""
        self.disconnect()
        client = BackendClient(validate_url(url), token=token or None)
        client.health()
        info = client.info()
        self.mode, self.client = REMOTE, client
        return info

    def test_connection(self) -> dict[str, Any]:
        """``/v1/health`` then ``/v1/info`` of the current backend (raises a BackendError subclass)."""
        client = self.require()
        client.health()
        return client.info()

    def require(self) -> BackendClient:
        if self.client is None:
            raise BackendError("not connected to a backend: start the local backend or connect to a remote one")
        return self.client

    def check_upload_allowed(self) -> None:
        """Ask before a patient image goes to a server that is not on this machine."""
        client = self.require()
        if self.mode == LOCAL or is_loopback(client.base_url) or client.base_url in self._allowed_uploads:
            return
        if not self.confirm_upload(client.base_url):
            raise UploadDeclined(f"sending the image to {client.base_url} was not allowed")
        self._allowed_uploads.add(client.base_url)

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.local is not None:
            self.local.stop()
        self.mode, self.client, self.local = "", None, None
