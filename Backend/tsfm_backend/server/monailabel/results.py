"""Label maps as MONAI Label's Slicer plugin reads them: values 1..N, a name table, an image file.

The plugin imports a result with ``ImportLabelmapToSegmentationNode(labelmap, segmentation, names)``,
which gives label value ``v`` to the ``v``-th name of the list it builds from ``label_names``
(``{name: value}`` sorted by value). Our models may number classes with gaps (``{1: liver, 3: spleen}``),
so the values travel renumbered 1..N in ascending class order, and ``label_names`` says so.
"""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

from tsfm_backend.image_io import write_volume
from tsfm_backend.server.errors import BadInput
from tsfm_backend.volume import Volume

RESULT_EXTENSIONS = (".nrrd", ".nii.gz", ".nii")
DEFAULT_EXTENSION = ".nii.gz"  # MONAI Label's own default; the Slicer plugin always asks for .nrrd


def label_names(classes: dict[int, str]) -> dict[str, int]:
    """``{name: value}`` with values 1..N in ascending class order; a name used twice gets its class id
    appended, since the plugin keys segments by name."""
    counts = Counter(classes.values())
    table: dict[str, int] = {}
    for value, (class_id, name) in enumerate(sorted(classes.items()), start=1):
        table[name if counts[name] == 1 else f"{name} ({class_id})"] = value
    return table


def renumbered(labels: np.ndarray, classes: dict[int, str]) -> np.ndarray:
    """``labels`` (K, J, I) with class ``classes``' ids mapped to 1..N in ascending order, others to 0;
    uint8 while N < 256 (the dtype the plugin asks for), else uint16."""
    ids = sorted(classes)
    dtype = np.uint8 if len(ids) < 256 else np.uint16
    table = np.zeros(int(labels.max(initial=0)) + 1, dtype=dtype)
    for value, class_id in enumerate(ids, start=1):
        if class_id < table.size:
            table[class_id] = value
    return table[labels]


def result_extension(params: dict) -> str:
    """The file suffix the request asks for (``result_extension``), one of ``RESULT_EXTENSIONS``."""
    extension = params.get("result_extension") or DEFAULT_EXTENSION
    if extension not in RESULT_EXTENSIONS:
        raise BadInput(f"result_extension {extension!r} is not served here; ask for one of {RESULT_EXTENSIONS}")
    return extension


def label_file(volume: Volume, labels: np.ndarray, extension: str) -> tuple[str, bytes]:
    """``(file name, bytes)`` of ``labels`` (K, J, I) written with ``volume``'s spacing, origin and direction.

    The name is the server's own (the client saves the file under it in its temporary folder), so
    nothing a request sent can steer where the client writes.
    """
    name = f"tsfm-{uuid.uuid4().hex}{extension}"
    with tempfile.TemporaryDirectory(prefix="tsfm-monailabel-") as folder:
        path = write_volume(volume.with_array(labels), Path(folder) / name)
        return name, path.read_bytes()
