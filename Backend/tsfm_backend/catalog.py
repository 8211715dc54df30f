"""The catalog of known official models: where each file is, its size, hash and license.

``catalog.json`` ships with the package; ``$TSFM_CATALOG`` points to another file (mirrors, tests).
Entries marked ``redistributable: false`` are never bundled: each user fetches them and must accept
their license first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tsfm_backend.formats.errors import CheckpointError, UnknownModelError

BUNDLED_CATALOG = Path(__file__).resolve().parent / "catalog.json"


@dataclass(frozen=True)
class CatalogFile:
    """One file of a model: name on disk, URL (None: manual download only), size in bytes, SHA-256."""

    name: str
    url: str | None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class CatalogEntry:
    """A known model. The first file is the checkpoint; the others are its companions."""

    id: str
    title: str
    family: str
    format: str
    kind: str
    license: str
    redistributable: bool
    homepage: str
    files: tuple[CatalogFile, ...]
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def downloadable(self) -> bool:
        """True when every file has a URL (otherwise the user downloads by hand and imports)."""
        return all(f.url for f in self.files)

    @property
    def size(self) -> int | None:
        """Bytes of all files together; None when the catalog does not know every file's size."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]


def catalog_path() -> Path:
    return Path(os.environ.get("TSFM_CATALOG") or BUNDLED_CATALOG)


def load_catalog(path: str | Path | None = None) -> list[CatalogEntry]:
    """Every entry of the catalog file; raises CheckpointError naming the entry and field that is wrong."""
    path = Path(path) if path is not None else catalog_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read the model catalog: {error}") from error
    entries = []
    for index, item in enumerate(data.get("models", [])):
        try:
            files = tuple(CatalogFile(**f) for f in item["files"])
            known = {k: v for k, v in item.items() if k != "files" and k in CatalogEntry.__dataclass_fields__}
            extra = {k: v for k, v in item.items() if k not in CatalogEntry.__dataclass_fields__}
            entries.append(CatalogEntry(files=files, extra=extra, **known))
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{path}: catalog entry {index} ({item.get('id', '?')}): {error}") from error
        if not files:
            raise CheckpointError(f"{path}: catalog entry {item['id']!r} lists no files")
    return entries


def catalog_entry(model_id: str, path: str | Path | None = None) -> CatalogEntry:
    """The entry for ``model_id``; UnknownModelError lists the known ids."""
    entries = load_catalog(path)
    for entry in entries:
        if entry.id == model_id:
            return entry
    raise UnknownModelError(
        f"{model_id!r} is not in the model catalog; known: {', '.join(e.id for e in entries)}"
    )
