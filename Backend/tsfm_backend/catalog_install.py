"""Installing a catalog model: download every file of its entry, then import the checkpoint.

The one path behind ``tsfm-backend fetch`` and the server's ``POST /v1/downloads``. Files land in
``$TSFM_HOME/downloads/<id>/`` and stay there, so an interrupted or cancelled install resumes from
them. The model appears in ``$TSFM_HOME/models/<id>/`` only once ``import_model`` has checked the
weights against the architecture and written both files (``formats.ours.write`` renames the card
last), so nothing half-installed is ever listed or served.

Weights that are not ours to redistribute (``redistributable: false``: non-commercial terms, terms their
publisher states inconsistently, or none) are never fetched unless the caller says the user accepted
their licence; ``install_entry`` refuses before the first byte (``LicenseNotAccepted``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tsfm_backend.catalog import CatalogEntry
from tsfm_backend.download import DownloadCancelled, DownloadError, ShouldStop, download
from tsfm_backend.model_card import ModelCard
from tsfm_backend.store import downloads_dir

# (bytes done, bytes in total or None while unknown, what is happening) over all files of the entry.
InstallProgress = Callable[[int, int | None, str], None]


class LicenseNotAccepted(DownloadError):
    """A catalog model whose licence the user must accept before it is downloaded, not accepted."""


def check_license(entry: CatalogEntry, accepted: bool, how: str) -> None:
    """Raise ``LicenseNotAccepted`` naming the licence, where to read it and ``how`` to accept it, when
    ``entry``'s weights need acceptance and ``accepted`` is False."""
    if not entry.redistributable and not accepted:
        raise LicenseNotAccepted(
            f"{entry.id} is under {entry.license}, which does not allow redistribution: read it at "
            f"{entry.homepage} and {how} to download it for yourself")


def download_entry(
    entry: CatalogEntry,
    *,
    progress: bool = True,
    on_progress: InstallProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> list[Path]:
    """Download (or find, verified) every file of ``entry``; returns their paths, checkpoint first.

    Raises DownloadError for an entry without direct links (naming the manual route in its notes) or a
    file that fails; DownloadCancelled when ``should_stop()`` turns True.
    """
    if not entry.downloadable:
        raise DownloadError(f"{entry.id} has no direct download. {entry.notes}".strip())
    folder = downloads_dir() / entry.id
    done = [0] * len(entry.files)
    totals: list[int | None] = [f.size for f in entry.files]
    paths = []
    for index, file in enumerate(entry.files):
        stage = f"downloading {file.name} ({index + 1} of {len(entry.files)})"

        def file_progress(bytes_done: int, bytes_total: int | None, index: int = index, stage: str = stage) -> None:
            done[index] = bytes_done
            if bytes_total is not None:
                totals[index] = bytes_total
            if on_progress is not None:
                known = None if any(t is None for t in totals) else sum(totals)  # type: ignore[arg-type]
                on_progress(sum(done), known, stage)

        paths.append(download(file.url, folder / file.name, size=file.size, sha256=file.sha256,  # type: ignore[arg-type]
                              progress=progress, on_progress=file_progress, should_stop=should_stop))
    return paths


def install_entry(
    entry: CatalogEntry,
    *,
    accept_license: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_progress: InstallProgress | None = None,
    should_stop: ShouldStop | None = None,
) -> tuple[ModelCard, Path, str]:
    """Download ``entry``'s files and import its checkpoint as model ``entry.id``.

    Returns (card, installed folder, source format) like ``checkpoints.import_model``. A cancel is
    honoured until the files are verified; the import that follows is short and always completes, so
    the store never holds part of a model. ``accept_license`` says the user accepted the licence of
    weights that need it; without it such an entry raises ``LicenseNotAccepted`` before any download.
    """
    from tsfm_backend.checkpoints import import_model

    check_license(entry, accept_license, "accept it (tsfm-backend fetch --accept-license, or "
                                          "accept_license: true in POST /v1/downloads)")
    paths = download_entry(entry, progress=progress, on_progress=on_progress, should_stop=should_stop)
    if should_stop is not None and should_stop():
        raise DownloadCancelled(f"{entry.id}: cancelled after its files were downloaded; nothing was installed")
    if on_progress is not None:
        total = sum(path.stat().st_size for path in paths)
        on_progress(total, total, f"installing {entry.id}")
    return import_model(
        paths[0], entry.id, license=entry.license,
        provenance={"catalog_id": entry.id, "homepage": entry.homepage, "url": entry.files[0].url},
        overwrite=overwrite,
    )
