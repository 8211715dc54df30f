"""Where each segment came from: model, prompts, review status, and whether a person edited it since.

The record lives on the segment itself as a JSON tag, so it is saved with the segmentation
(``.seg.nrrd``) and travels with exports. "Edited" is not a flag someone has to remember to set: the
record keeps a checksum of the voxels the model last wrote, and a segment whose voxels differ from it
has been edited (by the Segment Editor or any other tool).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

import numpy as np
import vtk

from .segments import read_segment_crop, segment_ids
from .volumes import image_geometry

TAG = "TSFMSegmentation.Provenance"
PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
REVIEW_STATES = (PENDING, ACCEPTED, REJECTED)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def voxel_checksum(segmentation_node, segment_id: str, volume_node) -> str:  # noqa: ANN001
    """sha1 of the segment's voxels on the volume grid (bit-packed), independent of labelmap layout."""
    k, j, i = image_geometry(volume_node).shape_kji
    return mask_checksum(read_segment_crop(segmentation_node, segment_id, volume_node, (0, i - 1, 0, j - 1, 0, k - 1)))


def mask_checksum(mask: np.ndarray) -> str:
    """sha1 of a {0, 1} mask (K, J, I), bit-packed."""
    return hashlib.sha1(np.packbits(mask.ravel() > 0).tobytes()).hexdigest()


def read(segmentation_node, segment_id: str) -> dict[str, Any]:  # noqa: ANN001
    """The stored record of a segment ({} for a segment no model produced)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise KeyError(f"no segment '{segment_id}' in '{segmentation_node.GetName()}'")
    value = vtk.reference("")
    if not segment.GetTag(TAG, value) or not value.get():
        return {}
    return json.loads(value.get())


def _write(segmentation_node, segment_id: str, record: dict[str, Any]) -> None:  # noqa: ANN001
    segmentation_node.GetSegmentation().GetSegment(segment_id).SetTag(TAG, json.dumps(record, sort_keys=True))


def record_model_output(segmentation_node, segment_id: str, volume_node, model: str, source: str,  # noqa: ANN001
                        prompts: list[dict[str, Any]] | None = None, backend: str = "") -> dict[str, Any]:
    """Note that ``model`` just wrote this segment (``source`` "automatic" or "interactive").

    Prompts accumulate over an interactive session; the checksum is taken now, after the write.
    """
    record = read(segmentation_node, segment_id)
    record.setdefault("created", now_iso())
    record.setdefault("status", PENDING)
    record.update(model=model, source=source, backend=backend, updated=now_iso(),
                  checksum=voxel_checksum(segmentation_node, segment_id, volume_node))
    record["prompts"] = list(record.get("prompts", [])) + [dict(p) for p in (prompts or [])]
    _write(segmentation_node, segment_id, record)
    return record


def set_review(segmentation_node, segment_id: str, status: str, reviewer: str = "") -> None:  # noqa: ANN001
    """Accept or reject a segment (or put it back to pending)."""
    if status not in REVIEW_STATES:
        raise ValueError(f"review status must be one of {REVIEW_STATES}, not {status!r}")
    record = read(segmentation_node, segment_id)
    record.update(status=status, reviewed=now_iso(), reviewer=reviewer)
    _write(segmentation_node, segment_id, record)


def describe(segmentation_node, segment_id: str, volume_node) -> dict[str, Any]:  # noqa: ANN001
    """The record plus the computed ``edited`` flag and the segment's name, for review and export."""
    record = read(segmentation_node, segment_id)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    edited = bool(record) and record.get("checksum") != voxel_checksum(segmentation_node, segment_id, volume_node)
    described = {key: value for key, value in record.items() if key != "checksum"}
    described.update(name=segment.GetName(), segment_id=segment_id, edited=edited or not record,
                     model=record.get("model", ""), status=record.get("status", PENDING),
                     source=record.get("source", "manual"))
    return described


def describe_all(segmentation_node, volume_node) -> list[dict[str, Any]]:  # noqa: ANN001
    return [describe(segmentation_node, sid, volume_node) for sid in segment_ids(segmentation_node)]

