"""Where models live: ``$TSFM_HOME/models/<id>/`` (imported or fetched) and the bundled resources.

A model folder is in our own format (``model.safetensors`` + ``model.json``). Ids resolve in the
user's store first, so an imported model may shadow a bundled one of the same id.
"""

from __future__ import annotations

import os
from pathlib import Path

from tsfm_backend.formats import ours
from tsfm_backend.formats.errors import UnknownModelError
from tsfm_backend.model_card import ModelCard, ModelCardError

BUNDLED_MODELS = Path(__file__).resolve().parent / "resources" / "models"
# The promptable model a new user meets first: the demo, ``segment`` and Slicer's model list start with it.
DEFAULT_INTERACTIVE_MODEL = "universal-click-small"


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
