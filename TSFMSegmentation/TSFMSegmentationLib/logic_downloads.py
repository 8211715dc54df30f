"""Getting a model from the backend's catalog as a download the GUI polls: start, poll, cancel.

The backend downloads (resumable, size- and SHA-256-checked), installs and starts serving the model;
this side only asks. ``ModelDownload.poll()`` makes one status request and returns at once, so the
widget calls it from a ``qt.QTimer`` and Slicer never freezes; ``wait()`` loops over the same call for
scripts. Qt- and Slicer-free: plain pytest runs it against a real server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client import BackendClient, BackendError

FINAL_STATES = ("done", "failed", "cancelled")
# Kept below 1 until the server says done: after the last byte it still verifies, installs and loads.
UNFINISHED_CAP = 0.99


@dataclass(frozen=True)
class DownloadProgress:
    """What the GUI shows: ``fraction`` 0..1 for the progress bar, ``message`` for its label."""

    state: str
    fraction: float
    message: str
    bytes_done: int = 0
    bytes_total: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "done"


def progress_of(status: dict[str, Any]) -> DownloadProgress:
    """A server status (``GET /v1/downloads/{id}``) as a fraction and a message."""
    state = str(status.get("state", "queued"))
    done = int(status.get("bytes_done") or 0)
    total = status.get("bytes_total")
    total = int(total) if total else None
    if state == "done":
        fraction = 1.0
    elif total:
        fraction = min(done / total, UNFINISHED_CAP)
    else:
        fraction = 0.0  # size not known yet: the bar stays at 0 (the message says what happens)
    return DownloadProgress(state, fraction, str(status.get("message", "")), done, total)


class ModelDownload:
    """One catalog model, ``model_id``, fetched by the server behind ``client``.

    Args:
        accept_license: the user accepted the license of weights that may not be redistributed
            (ask first when the catalog entry has ``needs_license_acceptance``).
    """

    def __init__(self, client: BackendClient, model_id: str, accept_license: bool = False) -> None:
        self.client = client
        self.model_id = model_id
        self.accept_license = accept_license
        self.download_id = ""
        self.status = DownloadProgress("new", 0.0, "")

    def start(self) -> str:
        """Ask the server to download the model; returns the download id.

        When that model is already downloading (another Slicer, or this one before a module reload),
        this follows the running download instead of starting a second one. Raises NotFound for an
        unknown id and BackendError (status 409) for a model that is already served, has no direct
        download, or needs its license accepted: each message says what to do.
        """
        answer = self.client.start_download(self.model_id, self.accept_license)
        self.download_id = str(answer["download_id"])
        self.status = progress_of(answer)
        return self.download_id

    def poll(self) -> DownloadProgress:
        """One status request; never blocks longer than that request."""
        self._require_started()
        self.status = progress_of(self.client.download_status(self.download_id))
        return self.status

    def cancel(self) -> None:
        """Ask the server to stop; the next ``poll`` shows ``cancelled`` (or ``done`` when it was installing)."""
        if self.download_id and not self.status.finished:
            self.status = progress_of(self.client.cancel_download(self.download_id))

    def wait(self, poll_s: float = 0.5, timeout_s: float | None = None,
             on_progress: Callable[[DownloadProgress], None] | None = None) -> DownloadProgress:
        """Blocking loop over ``poll`` (for scripts and tests); returns the final status, failed ones too."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.poll().finished:
            if on_progress is not None:
                on_progress(self.status)
            if deadline is not None and time.monotonic() > deadline:
                raise BackendError(f"download of {self.model_id} still {self.status.state} after {timeout_s} s")
            time.sleep(poll_s)
        if on_progress is not None:
            on_progress(self.status)
        return self.status

    def _require_started(self) -> None:
        if not self.download_id:
            raise BackendError(f"the download of {self.model_id} was not started: call start() first")


def offered_models(catalog: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The catalog entries a user can still get from the GUI: not served yet, and either downloadable
    or already installed on the server (then it only needs loading). Catalog order is kept."""
    return [e for e in catalog if not e.get("served") and (e.get("downloadable") or e.get("installed"))]


def needs_license_acceptance(entry: dict[str, Any]) -> bool:
    """True when the user must read and accept the license (``entry["homepage"]``) before downloading."""
    return not entry.get("redistributable", True) and not entry.get("installed")


def entry_label(entry: dict[str, Any]) -> str:
    """One line for a combo box: title, size and license, e.g. ``STU-Net-S ... (1.2 GB, Apache-2.0)``."""
    details = [entry.get("license", "license unknown")]
    if entry.get("installed"):
        details.insert(0, "installed")
    elif entry.get("size_bytes"):
        details.insert(0, format_bytes(int(entry["size_bytes"])))
    return f"{entry.get('title') or entry['id']} ({', '.join(details)})"


def format_bytes(size: int) -> str:
    """``format_bytes(1_500_000) == "1.5 MB"`` (decimal units, as download sizes are usually given)."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
