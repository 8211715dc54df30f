"""Which backend the module talks to: a local server it starts, or a remote one at a URL with a token.

Both end in the same ``BackendClient``; nothing after connecting knows which it is, except that a
remote backend asks before any patient image leaves the machine (``confirm_upload``). The token is
kept in memory only: it is never written to the scene, the parameter node or the settings.

A remote backend behind an institution's network may need an HTTP proxy and a private certificate
authority; both are explicit settings, because the environment's own proxy settings are ignored
(see ``BackendClient``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .backend_process import LocalBackend
from .client import BackendClient, BackendError, is_loopback

__all__ = ["LOCAL", "REMOTE", "BackendBusy", "Connection", "UploadDeclined", "describe_info", "is_loopback",
           "validate_ca_bundle", "validate_proxy", "validate_url"]

LOCAL, REMOTE = "local", "remote"
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


class UploadDeclined(BackendError):
    """The user did not allow sending the image to a remote server."""


class BackendBusy(BackendError):
    """The local backend is still starting; another start or connection must wait for it."""


def validate_url(url: str) -> str:
    """``http(s)://host[:port]`` without a path; anything else is refused with the reason."""
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"backend URL must look like http://host:8765 or https://host, not {url!r}")
    if parsed.path not in ("", "/") or parsed.query:
        raise ValueError(f"backend URL must not contain a path or query: {url!r}")
    return f"{parsed.scheme}://{parsed.netloc}"


def validate_proxy(proxy: str) -> str:
    """``http(s)://[user:password@]host[:port]``; anything else is refused with the reason."""
    parsed = urlparse(proxy.strip())
    try:
        port_ok = parsed.port is None or parsed.port > 0
    except ValueError:
        port_ok = False
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not port_ok:
        raise ValueError(f"proxy must look like http://proxy.example.org:3128, not {proxy!r}")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ValueError(f"proxy must not contain a path or query: {proxy!r}")
    return f"{parsed.scheme}://{parsed.netloc}"


def validate_ca_bundle(path: str) -> str:
    """The absolute path of an existing PEM file holding at least one certificate."""
    file = Path(path.strip()).expanduser()
    if not file.is_file():
        raise ValueError(f"CA bundle {path!r} is not an existing file: give the PEM file of the certificate "
                         "authority that signed the server's certificate")
    try:
        content = file.read_bytes()
    except OSError as error:
        raise ValueError(f"CA bundle {path!r} cannot be read: {error}") from error
    if _PEM_CERTIFICATE not in content:
        raise ValueError(f"CA bundle {path!r} holds no PEM certificate ({_PEM_CERTIFICATE.decode()}); "
                         "a binary .cer/.der file converts with: openssl x509 -inform der -in CA.cer -out CA.pem")
    return str(file.resolve())


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
    # True while connect_local waits for the server; its on_wait runs GUI events, so the user can
    # press Start (or Connect) again from inside that wait.
    _starting: bool = field(default=False, init=False, repr=False)

    def connect_local(self, python: str = sys.executable, device: str = "auto", timeout_s: float = 180.0,
                      extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                      on_wait: Callable[[float], None] | None = None,
                      base_env: dict[str, str] | None = None) -> dict[str, Any]:
        """Start a local server with ``python`` and return its ``/v1/info``.

        ``base_env`` is the environment for an interpreter that is not this process's own (see
        ``backend_process.backend_environment``). Raises BackendBusy when called while a start is
        still waiting; ``disconnect`` during the wait cancels the start (BackendStartError).
        """
        self._refuse_while_starting()
        self._starting = True
        try:
            self.disconnect()
            self.local = LocalBackend(python=python, device=device, extra_args=extra_args, env=env,
                                      base_env=base_env)
            url = self.local.start(timeout_s=timeout_s, on_wait=on_wait)
            self.mode, self.client = LOCAL, BackendClient(url)
        finally:
            self._starting = False
        self.client.health()
        return self.client.info()

    def connect_remote(self, url: str, token: str | None = None, proxy: str | None = None,
                       ca_bundle: str | None = None) -> dict[str, Any]:
        """Use a server elsewhere; checks that it answers and speaks our API, returns ``/v1/info``.

        Args:
            url: ``http(s)://host[:port]``.
            token: bearer token, kept in memory only.
            proxy: ``http(s)://host:port`` of an HTTP proxy to reach it through (empty: direct).
            ca_bundle: PEM file of a private certificate authority to trust (empty: the usual ones).
        """
        self._refuse_while_starting()
        base_url = validate_url(url)
        proxy = validate_proxy(proxy) if proxy else None
        ca_bundle = validate_ca_bundle(ca_bundle) if ca_bundle else None
        self.disconnect()
        client = BackendClient(base_url, token=token or None, proxy=proxy, ca_bundle=ca_bundle)
        try:
            client.health()
            info = client.info()
        except BaseException:
            client.close()
            raise
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

    def _refuse_while_starting(self) -> None:
        if self._starting:
            raise BackendBusy("the local backend is already starting: wait until it answers, or stop it first")

    def disconnect(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.local is not None:
            self.local.stop()
        self.mode, self.client, self.local = "", None, None
