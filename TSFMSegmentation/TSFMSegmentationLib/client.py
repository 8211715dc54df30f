"""Torch-free client of the backend's ``/v1`` HTTP API (requests, numpy and stdlib only).

The module talks to a local or a remote backend through this one class, the same way. Arrays are
numpy (K, J, I) = (z, y, x), the order of ``slicer.util.arrayFromVolume``; geometry is ITK/LPS
(spacing per I, J, K in mm, LPS origin, direction columns = LPS directions of I, J, K); prompts are
voxel indices (k, j, i) of the uploaded image. Every failure is a ``BackendError`` subclass whose
message says what to do.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import numpy as np
import requests

from .wire import MEDIA_TYPE, WireError, decode_frame, encode_frame, image_digest

API_MAJOR = 1
DEFAULT_TIMEOUT = (5.0, 600.0)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Methods that change nothing more when sent twice: one of them lost to a reset connection is sent again.
IDEMPOTENT_METHODS = ("GET", "HEAD", "DELETE", "OPTIONS")
_RESETS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.RemoteDisconnected)


class BackendError(Exception):
    """Any failure talking to the backend; ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BackendUnavailable(BackendError):
    """Nothing answers at the address, or the connection broke (server stopped, crashed, network down)."""


class Unauthorized(BackendError):
    """The server wants a bearer token and the one sent is missing or wrong."""


class SessionExpired(BackendError):
    """The interactive session timed out on the server; open a new one and re-seed it from the current mask."""


class BadRequest(BackendError):
    """The server refused the request's content (400, 413, 422); the message names the field."""


class NotFound(BackendError):
    """Unknown image, job, session or model (for an image: upload it again)."""


class ServerBusy(BackendError):
    """At capacity (503); ``retry_after`` seconds is the server's suggestion."""

    def __init__(self, message: str, status: int | None = 503, retry_after: float = 2.0) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


_ERRORS_BY_STATUS: dict[int, type[BackendError]] = {
    400: BadRequest, 413: BadRequest, 422: BadRequest, 401: Unauthorized, 403: Unauthorized,
    404: NotFound, 410: SessionExpired, 503: ServerBusy,
}
_SAFE_DTYPES = {"bool": np.uint8, "float16": np.float32}


class BackendClient:
    """One connection (kept alive) to a backend at ``base_url`` such as ``http://127.0.0.1:8765``.

    Args:
        base_url: scheme, host and port of the server.
        token: bearer token when the server was started with ``--token``.
        timeout: (connect, read) seconds; reads include model work, so keep the second generous.
        proxy: ``http(s)://host:port`` of an HTTP proxy for both http and https; ignored for a
            loopback server (a proxy cannot reach this machine's own 127.0.0.1).
        ca_bundle: PEM file of the certificate authorities to trust for https (a hospital's private
            CA); None trusts the usual public ones.
    """

    def __init__(self, base_url: str, token: str | None = None,
                 timeout: float | tuple[float, float] = DEFAULT_TIMEOUT, proxy: str | None = None,
                 ca_bundle: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.proxy = None if is_loopback(self.base_url) else (proxy or None)
        self._http = requests.Session()
        # The environment's proxy, CA and .netrc settings stay out: a system proxy must not swallow
        # requests to a local server, and a .netrc entry would replace the bearer token below.
        self._http.trust_env = False
        if self.proxy:
            self._http.proxies = {"http": self.proxy, "https": self.proxy}
        if ca_bundle:
            self._http.verify = ca_bundle
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"

    # ---- discovery ------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "api_version"}``; raises BackendError if the server speaks another major version."""
        answer = self._json("GET", "/v1/health")
        major = str(answer.get("api_version", "0")).split(".")[0]
        if major != str(API_MAJOR):
            raise BackendError(f"the backend speaks API {answer.get('api_version')}, this module needs "
                               f"{API_MAJOR}.x: update the one that is older")
        return answer

    def info(self) -> dict[str, Any]:
        """API and package versions, device (GPU name and memory), served models, limits."""
        return self._json("GET", "/v1/info")

    def models(self) -> list[dict[str, Any]]:
        """[{id, kind automatic|promptable, family, classes {"1": name}, license, description, ...}]."""
        return self._json("GET", "/v1/models")

    # ---- images ---------------------------------------------------------------------------------
    def upload_image(self, array: np.ndarray, spacing: Any, origin: Any = (0.0, 0.0, 0.0),
                     direction: Any = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> str:
        """Send an image once and return its content id; an image the server already holds is not resent.

        Args:
            array: voxels (K, J, I).
            spacing: mm per (I, J, K); origin: LPS mm of voxel (0, 0, 0);
            direction: 3x3 (or 9 numbers, row-major) whose columns are the LPS directions of I, J, K.
        """
        array = np.asarray(array)
        if array.dtype.name in _SAFE_DTYPES:
            array = array.astype(_SAFE_DTYPES[array.dtype.name])
        spacing = [float(v) for v in spacing]
        origin = [float(v) for v in origin]
        direction = [float(v) for v in np.asarray(direction, dtype=float).ravel()]
        image_id = image_digest(array, spacing, origin, direction)
        if self.has_image(image_id):
            return image_id
        try:
            body = encode_frame({"spacing": spacing, "origin": origin, "direction": direction}, array)
        except (WireError, ValueError) as error:
            raise BadRequest(f"image cannot be sent: {error}") from error
        answer = self._json("POST", "/v1/images", data=body, headers={"Content-Type": MEDIA_TYPE})
        return answer["image_id"]

    def has_image(self, image_id: str) -> bool:
        response = self._request("HEAD", f"/v1/images/{image_id}")
        return response.status_code == 200

    # ---- automatic jobs -------------------------------------------------------------------------
    def start_job(self, image_id: str, model: str, options: dict[str, Any] | None = None) -> str:
        """Queue a whole-volume segmentation; options are SegmentOptions fields (step, tta, fast, ...)."""
        body = {"image_id": image_id, "model": model, "options": options or {}}
        return self._json("POST", "/v1/jobs", json=body)["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        """{state queued|running|done|failed|cancelled, progress 0-1, message, queue_position, seconds}."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def job_result(self, job_id: str) -> tuple[np.ndarray, dict[int, str]]:
        """(labels (K, J, I) uint8/uint16 on the uploaded image's grid, {label: name})."""
        header, labels = self._frame("GET", f"/v1/jobs/{job_id}/result")
        return labels, {int(k): v for k, v in header.get("names", {}).items()}

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Ask the job to stop (honoured within one batch of windows); returns its status."""
        return self._json("DELETE", f"/v1/jobs/{job_id}")

    def wait_for_job(self, job_id: str, poll_s: float = 0.5, timeout_s: float | None = None,
                     on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the job is done, failed or cancelled and return its last status."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.job(job_id)
            if on_progress is not None:
                on_progress(status)
            if status["state"] in ("done", "failed", "cancelled"):
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise BackendError(f"job {job_id} still {status['state']} after {timeout_s} s")
            time.sleep(poll_s)

    # ---- interactive sessions ---------------------------------------------------------------------
    def create_session(self, image_id: str, model: str, modality: str | None = None) -> str:
        """Open an interactive session of a promptable model on an uploaded image; returns its id.

        ``modality`` (``CT``, ``MR``, ``PET`` or DICOM's ``PT``) tells a model that normalises by modality
        what the image is; None lets the backend detect it from the image."""
        body = {"image_id": image_id, "model": model}
        if modality is not None:
            body["modality"] = modality
        return self._json("POST", "/v1/sessions", json=body)["session_id"]

    def interact(self, session_id: str, interaction: dict[str, Any] | None,
                 mask: np.ndarray | None = None, object_id: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
        """Apply one prompt and return (origin (k, j, i), changed mask crop (K, J, I) uint8).

        Args:
            interaction: ``{"kind": "point", "point": [k, j, i], "positive": true, "object_id": 1}`` or
                ``{"kind": "box", "box": [[k0, j0, i0], [k1, j1, i1]], ...}`` (corners inclusive); may be
                None when only ``mask`` is sent.
            mask: optional starting mask (K, J, I) of the whole image for ``object_id``, set first
                (how a client re-seeds a new session from its current segment).
        """
        path = f"/v1/sessions/{session_id}/interactions"
        if mask is None:
            if interaction is None:
                raise BadRequest("give an interaction, a starting mask, or both")
            return self._crop("POST", path, json=interaction)
        header: dict[str, Any] = {"object_id": int(object_id)}
        if interaction is not None:
            header["interaction"] = interaction
        body = encode_frame(header, (np.asarray(mask) > 0).astype(np.uint8))
        return self._crop("POST", path, data=body, headers={"Content-Type": MEDIA_TYPE})

    def undo(self, session_id: str, object_id: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
        return self._crop("POST", f"/v1/sessions/{session_id}/undo", json={"object_id": object_id})

    def redo(self, session_id: str, object_id: int = 1) -> tuple[tuple[int, int, int], np.ndarray]:
        return self._crop("POST", f"/v1/sessions/{session_id}/redo", json={"object_id": object_id})

    def reset_session(self, session_id: str, object_id: int | None = None) -> None:
        """Clear one object's mask and history, or every object's when ``object_id`` is None."""
        self._request_ok("POST", f"/v1/sessions/{session_id}/reset", json={"object_id": object_id})

    def heartbeat(self, session_id: str) -> float:
        """Keep the session's lease alive; returns the seconds left before it would expire."""
        # A POST, but renewing a lease twice is renewing it once: safe to resend after a reset.
        answer = self._json("POST", f"/v1/sessions/{session_id}/heartbeat", idempotent=True)
        return float(answer["expires_in_s"])

    def close_session(self, session_id: str) -> None:
        self._request_ok("DELETE", f"/v1/sessions/{session_id}")

    def close(self) -> None:
        self._http.close()

    # ---- transport ----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, idempotent: bool | None = None, **kwargs: Any) -> requests.Response:
        """Send one request; ``idempotent`` (default: GET, HEAD, DELETE, OPTIONS) allows one resend.

        The server closes a kept-alive connection after some answers (any 500, for one), and a request
        sent on it at that moment fails with a reset although the server never saw it. Such a request is
        sent once more on a fresh connection when sending it twice is harmless; never an interaction,
        which would apply a prompt twice.
        """
        url = self.base_url + path
        resend = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        try:
            try:
                return self._http.request(method, url, timeout=self.timeout, **kwargs)
            except requests.ConnectionError as error:
                if not (resend and _is_reset(error)):
                    raise
            return self._http.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout as error:
            raise BackendUnavailable(f"the backend at {self.base_url} did not answer {method} {path} in time "
                                     f"({self.timeout} s): it may be overloaded or stuck") from error
        except requests.exceptions.ProxyError as error:
            raise BackendUnavailable(f"cannot reach the backend at {self.base_url} through the proxy "
                                     f"{without_credentials(self.proxy or '')}: {_root_cause(error)}. Check the "
                                     "proxy address, or leave it empty for a direct connection.") from error
        except requests.exceptions.SSLError as error:
            raise BackendUnavailable(f"the secure connection to {self.base_url} failed: {_root_cause(error)}. "
                                     "If the server's certificate comes from your institution's own certificate "
                                     "authority, give that authority's PEM file as the CA bundle.") from error
        except requests.ConnectionError as error:
            raise BackendUnavailable(f"cannot reach the backend at {self.base_url} ({method} {path}): "
                                     f"{_root_cause(error)}. Is the server running and the address right?") from error
        except requests.RequestException as error:
            raise BackendError(f"{method} {path} failed: {error}") from error

    def _request_ok(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self._request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error_from(response, method, path)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request_ok(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as error:
            raise BackendError(f"{method} {path}: the answer is not JSON; is {self.base_url} a tsfm-backend?",
                               response.status_code) from error

    def _frame(self, method: str, path: str, **kwargs: Any) -> tuple[dict[str, Any], np.ndarray]:
        response = self._request_ok(method, path, **kwargs)
        try:
            return decode_frame(response.content)
        except WireError as error:
            raise BackendError(f"{method} {path}: {error}", response.status_code) from error

    def _crop(self, method: str, path: str, **kwargs: Any) -> tuple[tuple[int, int, int], np.ndarray]:
        header, mask = self._frame(method, path, **kwargs)
        origin = tuple(int(v) for v in header["origin"])
        return origin, mask  # type: ignore[return-value]

    # ---- model catalog and downloads ----------------------------------------------------------------
    def catalog(self) -> list[dict[str, Any]]:
        """The models the backend can fetch: [{id, title, kind, family, license, redistributable, homepage,
        notes, size_bytes (None: unknown), downloadable, installed (in its store), served (in ``models()``)}]."""
        return self._json("GET", "/v1/catalog")

    def start_download(self, model: str, accept_license: bool = False) -> dict[str, Any]:
        """Have the backend download and install a catalog model; returns the download's status.

        Asking again while that model downloads answers with the same download. ``accept_license``
        must be True for weights that may not be redistributed (the user accepted their license).
        Raises NotFound for an id the catalog does not know (the message lists the known ones) and
        BackendError with status 409 for a model already served, one without a direct download
        (import it by hand) or a license not accepted.
        """
        body = {"model": model, "accept_license": bool(accept_license)}
        return self._json("POST", "/v1/downloads", json=body)

    def download_status(self, download_id: str) -> dict[str, Any]:
        """{download_id, model, state queued|running|done|failed|cancelled, bytes_done, bytes_total, message}."""
        return self._json("GET", f"/v1/downloads/{download_id}")

    def cancel_download(self, download_id: str) -> dict[str, Any]:
        """Stop a download within one chunk (the partial file stays for a resume); returns its status."""
        return self._json("DELETE", f"/v1/downloads/{download_id}")


def _error_from(response: requests.Response, method: str, path: str) -> BackendError:
    try:
        message = str(response.json().get("error") or response.text)
    except ValueError:
        message = response.text[:300] or response.reason
    status = response.status_code
    text = f"{method} {path}: {status} {message}"
    cls = _ERRORS_BY_STATUS.get(status, BackendError)
    if cls is ServerBusy:
        try:
            retry_after = float(response.headers.get("Retry-After", 2))
        except ValueError:
            retry_after = 2.0
        return ServerBusy(text, status, retry_after)
    return cls(text, status)


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine."""
    return urlparse(url).hostname in LOOPBACK_HOSTS


def without_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages and logs."""
    parsed = urlparse(url)
    if not parsed.hostname or "@" not in parsed.netloc:
        return url
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()


def _is_reset(error: BaseException) -> bool:
    """Whether ``error`` comes from a connection the other end reset or closed mid-request.

    requests and urllib3 wrap the socket's error both as an argument and as the cause or context, so
    the search follows all three (a few links at most; ``seen`` stops a cycle).
    """
    pending: list[object] = [error]
    seen: set[int] = set()
    while pending and len(seen) < 32:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, _RESETS):
            return True
        pending.extend([current.__cause__, current.__context__, *current.args])
    return False


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return str(error) or type(error).__name__
