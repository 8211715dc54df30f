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

from .segments import occupied_extent, read_segment_crop, segment_ids

TAG = "TSFMSegmentation.Provenance"
PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
REVIEW_STATES = (PENDING, ACCEPTED, REJECTED)
MAX_LABELS_FOR_ONE_PASS = 4096


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def voxel_checksum(segmentation_node, segment_id: str, volume_node) -> str:  # noqa: ANN001
    """Checksum of the segment's voxels on the volume grid, independent of how Slicer stores them."""
    region = occupied_extent(segmentation_node, segment_id, volume_node)
    if region is None:
        return mask_checksum(np.zeros((1, 1, 1), np.uint8))
    mask = read_segment_crop(segmentation_node, segment_id, volume_node, region)
    return mask_checksum(mask, (region[4], region[2], region[0]))


def mask_checksum(mask: np.ndarray, origin_kji: tuple[int, int, int] = (0, 0, 0)) -> str:
    """sha1 of where a {0, 1} mask (K, J, I) is set: its bounding box on the volume grid and the voxels
    inside it, so the same voxels give the same checksum whatever region they were read from."""
    mask = np.asarray(mask) > 0
    occupied = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(len(index) == 0 for index in occupied):
        return hashlib.sha1(b"empty").hexdigest()
    low = [int(index[0]) for index in occupied]
    high = [int(index[-1]) + 1 for index in occupied]
    box = mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    corner = np.array([origin_kji[a] + low[a] for a in range(3)] + list(box.shape), np.int64)
    return hashlib.sha1(corner.tobytes() + np.packbits(box.ravel()).tobytes()).hexdigest()


def label_checksums(labels: np.ndarray) -> dict[int, str]:
    """``mask_checksum(labels == value)`` for every value > 0 present in a label map (K, J, I), in about
    three passes over the map instead of one per label."""
    labels = np.asarray(labels)
    count = int(labels.max(initial=0)) + 1
    if count > MAX_LABELS_FOR_ONE_PASS:
        return {int(v): mask_checksum(labels == v) for v in np.unique(labels) if v > 0}
    # occupied[axis][index, value]: whether ``value`` appears in slice ``index`` along ``axis``.
    occupied = []
    for axis in range(3):
        moved = np.moveaxis(labels, axis, 0)
        occupied.append(np.stack([np.bincount(moved[index].ravel(), minlength=count) > 0
                                  for index in range(moved.shape[0])]))
    checksums = {}
    for value in np.flatnonzero(occupied[0].any(axis=0)):
        if value == 0:
            continue
        spans = [np.flatnonzero(occupied[axis][:, value]) for axis in range(3)]
        box = tuple(slice(int(span[0]), int(span[-1]) + 1) for span in spans)
        checksums[int(value)] = mask_checksum(labels[box] == value, tuple(int(span[0]) for span in spans))
    return checksums


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
                        prompts: list[dict[str, Any]] | None = None, backend: str = "",
                        checksum: str | None = None) -> dict[str, Any]:
    """Note that ``model`` just wrote this segment (``source`` "automatic" or "interactive").

    Prompts accumulate over an interactive session. ``checksum`` (``mask_checksum`` of what the model
    wrote) saves reading the segment back; without it the segment is read now, after the write.
    """
    record = read(segmentation_node, segment_id)
    record.setdefault("created", now_iso())
    record.setdefault("status", PENDING)
    record.update(model=model, source=source, backend=backend, updated=now_iso(),
                  checksum=checksum or voxel_checksum(segmentation_node, segment_id, volume_node))
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

