"""Where the real sample data lives (CT with tumour masks, released files): the ``shared/data`` folder.

The project expects it beside the repository checkout (``../shared/data``). A clone made elsewhere
(``git clone /work/main /tmp/x``) finds it beside the checkout it was cloned from, read from git's
``remote.origin.url`` when that is a local folder. ``$TSFM_SHARED_DATA`` overrides both.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Backend/tsfm_backend/shared_data.py -> the repository root of a source checkout.
REPOSITORY = Path(__file__).resolve().parents[2]
ENVIRONMENT_VARIABLE = "TSFM_SHARED_DATA"


def _beside(repository: Path) -> Path:
    return repository.parent / "shared" / "data"


def _cloned_from(repository: Path) -> Path | None:
    """The local folder this checkout was cloned from, or None (no git, no origin, or a remote URL)."""
    try:
        url = subprocess.run(["git", "-C", str(repository), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    url = url.removeprefix("file://")
    if not url or "://" in url or not Path(url).is_absolute():
        return None
    return Path(url)


def shared_data_dir(repository: Path = REPOSITORY) -> Path:
    """``$TSFM_SHARED_DATA``, else ``shared/data`` beside the checkout, else beside the checkout it was
    cloned from; where none exists, the first of these (so that an error names where data was expected)."""
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return Path(os.environ[ENVIRONMENT_VARIABLE])
    beside = _beside(repository)
    if beside.is_dir():
        return beside
    origin = _cloned_from(repository)
    if origin is not None and _beside(origin).is_dir():
        return _beside(origin)
    return beside
