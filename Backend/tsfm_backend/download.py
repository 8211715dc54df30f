"""Downloading model files: resumable (HTTP Range), size- and SHA-256-checked, with a progress bar.

A download goes to ``<file>.partial`` and is renamed only once complete and verified, so an
interrupted run resumes where it stopped and a wrong file never looks finished. A caller that is not
a terminal (the server's download manager) passes ``on_progress`` and ``should_stop``: both are
called between chunks, so a cancel takes effect within one chunk and keeps the partial file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tsfm_backend.formats.errors import CheckpointError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
Progress = Callable[[int, int | None], None]
ShouldStop = Callable[[], bool]


class DownloadError(CheckpointError):
    """A file that could not be downloaded or is not the expected one."""


class DownloadCancelled(DownloadError):
    """``should_stop()`` said so; the ``.partial`` file stays, so a later download resumes from it."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, url: str, size: int | None, sha256: str | None) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(f"{url}: got {actual_size} bytes, expected {size}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise DownloadError(f"{url}: SHA-256 {actual} does not match the expected {sha256}")


def download(
    url: str,
    destination: str | Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    on_progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> Path:
    """Fetch ``url`` to ``destination``, resuming a ``.partial`` left by an earlier run.

    An existing ``destination`` that passes the size and hash checks is kept without any request. A
    finished download that fails them is deleted and DownloadError raised (naming expected and actual).
    ``on_progress(bytes_done, bytes_total or None)`` follows the file in bytes (resumed bytes included);
    ``should_stop()`` returning True raises DownloadCancelled before the next chunk.
    """
    from tqdm import tqdm

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.is_file():
        try:
            _verify(destination, url, size, sha256)
            _report(on_progress, destination.stat().st_size)
            return destination
        except DownloadError:
            log.warning("%s exists but does not match the catalog; downloading it again", destination)
            destination.unlink()
    partial = destination.with_name(destination.name + ".partial")
    offset = partial.stat().st_size if partial.is_file() else 0
    if size is not None and offset > size:
        partial.unlink()
        offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": "tsfm-backend"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    _stop_if_asked(should_stop, url, offset)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset and (size is None or offset == size):
            response = None  # the partial file is already complete
        else:
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"{url}: cannot connect: {getattr(error, 'reason', error)}") from error
    if response is not None:
        with response:
            if "text/html" in response.headers.get("Content-Type", ""):
                raise DownloadError(
                    f"{url}: the server answered with a web page instead of the file (a login or "
                    f"confirmation page); download it in a browser and use `tsfm-backend import`"
                )
            resumed = offset and response.status == 206
            if offset and not resumed:
                log.info("%s: server does not resume downloads; starting again", url)
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else size
            # read1 returns what has arrived (up to a chunk) instead of waiting for a full chunk, so a
            # slow link still reports progress and honours a cancel often.
            read = getattr(response, "read1", response.read)
            with (
                partial.open("ab" if resumed else "wb") as handle,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=destination.name,
                     disable=not progress) as bar,
            ):
                if on_progress is not None:
                    on_progress(offset, total)
                try:
                    for block in iter(lambda: read(CHUNK_BYTES), b""):
                        handle.write(block)
                        bar.update(len(block))
                        if on_progress is not None:
                            on_progress(handle.tell(), total)
                        _stop_if_asked(should_stop, url, handle.tell())
                except (OSError, http.client.HTTPException) as error:
                    raise DownloadError(
                        f"{url}: interrupted after {handle.tell()} bytes ({error}); run again to resume"
                    ) from error
                if total is not None and handle.tell() < total:
                    raise DownloadError(
                        f"{url}: interrupted after {handle.tell()} bytes of {total}; run again to resume"
                    )
    try:
        _verify(partial, url, size, sha256)
    except DownloadError:
        partial.unlink()
        raise
    partial.replace(destination)
    _report(on_progress, destination.stat().st_size)
    return destination


def _stop_if_asked(should_stop: ShouldStop | None, url: str, bytes_done: int) -> None:
    if should_stop is not None and should_stop():
        raise DownloadCancelled(f"{url}: cancelled after {bytes_done} bytes; the partial file is kept to resume")


def _report(on_progress: Progress | None, size: int) -> None:
    """A complete file: done and total are its size."""
    if on_progress is not None:
        on_progress(size, size)
