"""Model downloads run by the server: catalog entries fetched, installed and served in the background.

A download moves ``queued -> running -> done | failed | cancelled``. One thread runs them one at a
time: they share the network link and the disk, so two at once would finish neither sooner. Routes
only read a status or set a flag, so the event loop never waits on the network. A cancel stops the
transfer within one chunk and keeps the ``.partial`` file, so asking for the model again resumes it.
Once the files are verified the model is imported (short, no longer cancellable: the store never
holds half a model) and handed to ``serve``, which adds it to ``GET /v1/models`` without a restart.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tsfm_backend.catalog import CatalogEntry
from tsfm_backend.catalog_install import install_entry
from tsfm_backend.download import DownloadCancelled, DownloadError
from tsfm_backend.formats import ours
from tsfm_backend.server.errors import Busy, NotFound, ServiceError
from tsfm_backend.server.tasks import Timed
from tsfm_backend.store import BUNDLED_MODELS, install_dir

log = logging.getLogger(__name__)
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")

# Loads an installed model folder and adds it to the served models.
Serve = Callable[[Path], None]


@dataclass
class Download(Timed):
    """One catalog model being fetched; fields change under ``DownloadManager``'s lock only."""

    id: str
    model: str
    state: str = "queued"
    bytes_done: int = 0
    bytes_total: int | None = None
    message: str = "queued"
    started: float | None = None
    finished: float | None = None
    # False once the files are verified: from then on the install runs to its end.
    cancellable: bool = True
    # The user accepted the licence of weights that need it (``catalog_install.check_license``).
    license_accepted: bool = False
    cancel_requested: threading.Event = field(default_factory=threading.Event)


class DownloadManager:
    """Queues, runs, reports and forgets model downloads.

    Args:
        serve: called with the installed model's folder once it is in the store.
        max_queued: downloads allowed to wait at once; more raise Busy (503). Each model is queued at
            most once, so the catalog's size bounds the queue too.
        kept: finished downloads remembered for status requests; older ones are forgotten.
        retry_after_s: Retry-After suggested with Busy.
    """

    def __init__(self, serve: Serve, max_queued: int = 8, kept: int = 16, retry_after_s: int = 2) -> None:
        self.serve = serve
        self.max_queued, self.kept, self.retry_after_s = max_queued, kept, retry_after_s
        self._downloads: OrderedDict[str, Download] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Download, CatalogEntry] | None] = queue.SimpleQueue()
        # A daemon thread: a server that exits mid-download leaves a resumable ``.partial`` file and
        # never half a model (files are renamed into place once complete), so nothing waits for it.
        self._thread = threading.Thread(target=self._loop, name="tsfm-download", daemon=True)
        self._thread.start()

    def submit(self, entry: CatalogEntry, accept_license: bool = False) -> tuple[Download, bool]:
        """Queue ``entry``; returns (download, True), or (the queued or running one of that model, False).

        ``accept_license``: the user accepted the licence of weights that need it; without it such an
        entry fails before its first byte (``catalog_install.LicenseNotAccepted``).
        """
        with self._lock:
            for download in self._downloads.values():
                if download.model == entry.id and download.state in ACTIVE:
                    return download, False
            if sum(d.state == "queued" for d in self._downloads.values()) >= self.max_queued:
                raise Busy(f"{self.max_queued} downloads are already queued; try again later", self.retry_after_s)
            download = Download(id=uuid.uuid4().hex, model=entry.id, bytes_total=entry.size,
                                license_accepted=accept_license)
            self._downloads[download.id] = download
        self._queue.put((download, entry))
        log.info("download %s queued: %s", download.id, entry.id)
        return download, True

    def get(self, download_id: str) -> Download:
        with self._lock:
            download = self._downloads.get(download_id)
        if download is None:
            raise NotFound(f"download {download_id} does not exist (or finished long ago and was forgotten)")
        return download

    def cancel(self, download_id: str) -> Download:
        """Stop a download: a queued one at once, a running one within a chunk; an install in progress ends."""
        download = self.get(download_id)
        with self._lock:
            if download.state == "queued":
                download.state, download.finished = "cancelled", time.monotonic()
                download.message = "cancelled before it started"
            if download.state in ACTIVE and download.cancellable:
                download.cancel_requested.set()
                download.message = "cancelling"
        return download

    def close(self) -> None:
        """Stop everything: the running transfer ends within a chunk, queued ones never start."""
        with self._lock:
            for download in self._downloads.values():
                download.cancel_requested.set()
                if download.state == "queued":
                    download.state, download.message = "cancelled", "the server stopped"
                    download.finished = time.monotonic()
        self._queue.put(None)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            self._run(*item)

    def _run(self, download: Download, entry: CatalogEntry) -> None:
        with self._lock:
            if download.state != "queued":
                return
            download.state, download.message, download.started = "running", "starting", time.monotonic()

        def progress(bytes_done: int, bytes_total: int | None, stage: str) -> None:
            with self._lock:
                download.bytes_done, download.bytes_total = bytes_done, bytes_total
                if not download.cancel_requested.is_set():
                    download.message = stage

        def should_stop() -> bool:
            with self._lock:
                stop = download.cancel_requested.is_set()
                # Answering "go on" after the last file is the point of no return: the install follows.
                if not stop and download.bytes_total is not None and download.bytes_done >= download.bytes_total:
                    download.cancellable = False
                return stop

        try:
            folder = installed_folder(entry.id)
            if folder is not None:
                # Installed earlier (imported by hand, or fetched by the command line): serve it as it is.
                with self._lock:
                    download.cancellable, download.message = False, f"{entry.id} is installed; loading it"
            else:
                _, folder, _ = install_entry(entry, accept_license=download.license_accepted, progress=False,
                                             on_progress=progress, should_stop=should_stop)
                with self._lock:
                    download.cancellable, download.message = False, f"loading {entry.id}"
            self.serve(folder)
        except Exception as error:  # a download must end in a state whatever happened
            self._finish(download, "cancelled" if isinstance(error, DownloadCancelled) else "failed",
                         describe_failure(error))
            return
        self._finish(download, "done", f"{entry.id} is installed and served")

    def _finish(self, download: Download, state: str, message: str) -> None:
        with self._lock:
            download.state, download.message, download.finished = state, message, time.monotonic()
            if state == "done" and download.bytes_total is not None:
                download.bytes_done = download.bytes_total
            finished = [d_id for d_id, d in self._downloads.items() if d.state in FINISHED]
            for d_id in finished[: max(0, len(finished) - self.kept)]:
                del self._downloads[d_id]
        log_at = logging.ERROR if state == "failed" else logging.INFO
        log.log(log_at, "download %s of %s %s: %s", download.id, download.model, state, message)


def installed_folder(model_id: str) -> Path | None:
    """The model's folder in the store (or bundled), as ``store`` resolves ids; None when not installed."""
    for folder in (install_dir(model_id), BUNDLED_MODELS / model_id):
        if ours.detect(folder):
            return folder
    return None


def describe_failure(error: Exception) -> str:
    """One line a user can act on: the download's own message, or what failed while installing."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, DownloadCancelled):
        return text
    if isinstance(error, DownloadError):
        return f"download failed: {text[:500]}"
    if isinstance(error, ServiceError):
        return f"installed but not served: {error.message}"
    if isinstance(error, ValueError):
        return f"cannot install the downloaded checkpoint: {text[:500]}"
    return f"{type(error).__name__}: {text[:500]}"
