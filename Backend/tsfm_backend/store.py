"""Where models live: ``$TSFM_HOME/models/<id>/`` (imported or fetched) and the bundled resources.

A model folder is in our own format (``model.safetensors`` + ``model.json``). Ids resolve in the
user's store first, so an imported model may shadow a bundled one of the same id.

A model enters the store whole (``install_atomically``): its files are written into a hidden staging
folder ``models/.import-<pid>-<tag>-<id>``, and that folder is renamed to ``models/<id>``; a model
it replaces is first renamed aside to ``models/.replaced-<pid>-<tag>-<id>`` and deleted after. A
process killed at any point leaves either the old model or the new one listed, never a mix, plus
hidden folders that ``recover_store`` (run before every install) deletes, or renames back when the
kill fell between the two renames. Hidden folders are never listed.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tsfm_backend.formats import ours
from tsfm_backend.formats.errors import UnknownModelError
from tsfm_backend.model_card import ModelCard, ModelCardError

BUNDLED_MODELS = Path(__file__).resolve().parent / "resources" / "models"
# The promptable model a new user meets first: the demo, ``segment`` and Slicer's model list start with it.
DEFAULT_INTERACTIVE_MODEL = "universal-click-small"
_HIDDEN_FOLDER = re.compile(r"^\.(?P<kind>import|replaced)-(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})-(?P<id>.+)$")
# Where a process cannot be asked whether it still runs, a hidden folder this old is taken as left behind.
STALE_AFTER_S = 24 * 3600.0
_ACTIVE: set[str] = set()  # tags of the installs running in this process
_ACTIVE_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def tsfm_home() -> Path:
    """The user's backend folder: ``$TSFM_HOME`` or ``~/.tsfm``."""
    return Path(os.environ.get("TSFM_HOME") or Path.home() / ".tsfm").expanduser()


def models_dir() -> Path:
    """``$TSFM_HOME/models``: one sub-folder per installed model."""
    return tsfm_home() / "models"


def downloads_dir() -> Path:
    """``$TSFM_HOME/downloads``: official files being or already downloaded."""
    return tsfm_home() / "downloads"


def _model_folders() -> list[Path]:
    """Installed then bundled model folders; an id found in the store hides a bundled one."""
    seen: set[str] = set()
    folders: list[Path] = []
    for root in (models_dir(), BUNDLED_MODELS):
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.name.startswith("."):
                continue  # an install under way or left behind (see ``install_atomically``)
            if folder.name not in seen and ours.detect(folder):
                seen.add(folder.name)
                folders.append(folder)
    return folders


def installed_models() -> list[ModelCard]:
    """Cards of every usable model (store first, then bundled), sorted by id; broken cards are skipped."""
    cards = []
    for folder in _model_folders():
        try:
            cards.append(ModelCard.read(folder / ours.CARD_FILE))
        except ModelCardError:
            continue
    return sorted(cards, key=lambda card: card.id)


def is_bundled(model_id: str) -> bool:
    """True when the id resolves to a model shipped with the package (no store model shadows it)."""
    return not ours.detect(models_dir() / model_id) and ours.detect(BUNDLED_MODELS / model_id)


def resolve_model(id_or_path: str | os.PathLike) -> Path:
    """The folder (or official file) for a model id or an existing path.

    Raises UnknownModelError naming the places searched and the ids that are available.
    """
    text = str(id_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if "/" not in text and "\\" not in text:
        for root in (models_dir(), BUNDLED_MODELS):
            if ours.detect(root / text):
                return root / text
    available = ", ".join(card.id for card in installed_models()) or "none"
    raise UnknownModelError(
        f"model {text!r} is not a file or folder, nor installed in {models_dir()} or bundled; "
        f"available: {available}"
    )


def install_dir(model_id: str) -> Path:
    """The folder an imported model with this id is written to."""
    return models_dir() / model_id


def install_atomically(model_id: str, write: Callable[[Path], object]) -> Path:
    """Install a model as a whole: ``write(folder)`` fills a new staging folder in the store, which then
    replaces ``models/<id>`` by rename. Returns the installed folder.

    Whatever ``write`` raises leaves the store as it was (the staging folder is deleted, or, after a
    kill, deleted by the next install).
    """
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    recover_store()
    tag = f"{os.getpid()}-{secrets.token_hex(4)}-{model_id}"
    staging, aside, target = root / f".import-{tag}", root / f".replaced-{tag}", install_dir(model_id)
    with _ACTIVE_LOCK:
        _ACTIVE.add(tag)
    try:
        staging.mkdir()
        try:
            write(staging)
        except Exception:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if target.exists():
            os.replace(target, aside)
            os.replace(staging, target)
            shutil.rmtree(aside)
        else:
            os.replace(staging, target)
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(tag)
    return target


def recover_store() -> list[str]:
    """Finish what installs killed in the middle left behind; returns one line per folder handled (also logged).

    A staging folder is deleted (the model it held was never listed). A replaced model is renamed back
    when its id has no complete model (the kill fell between moving it aside and moving the new one
    in), else deleted. Folders of installs still running (in this or another live process) are left alone.
    """
    root = models_dir()
    done: list[str] = []
    if not root.is_dir():
        return done
    for folder in sorted(root.iterdir()):
        match = _HIDDEN_FOLDER.match(folder.name)
        if match is None or not folder.is_dir() or _install_running(folder, match):
            continue
        target = install_dir(match["id"])
        if match["kind"] == "replaced" and not ours.detect(target):
            if target.exists():
                shutil.rmtree(target)
            os.replace(folder, target)
            done.append(f"restored model {match['id']!r} that an interrupted install had moved aside")
        else:
            shutil.rmtree(folder)
            done.append(f"deleted {folder.name}, left behind by an interrupted install of {match['id']!r}")
    for line in done:
        log.warning("%s: %s", root, line)
    return done


def _install_running(folder: Path, match: re.Match) -> bool:
    pid = int(match["pid"])
    if pid == os.getpid():
        with _ACTIVE_LOCK:
            return f"{match['pid']}-{match['tag']}-{match['id']}" in _ACTIVE
    if os.name != "posix":  # no safe way to ask: go by age
        try:
            return time.time() - folder.stat().st_mtime < STALE_AFTER_S
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a live process of another user
    return True
