"""nnInteractive's prompts, checked against the image, as ``PendingPrompt``s of a lease.

Coordinates are indices of the image array the client sent: (k, j, i) for a Slicer volume, which
sends ``arrayFromVolume(...)[None]``. A box is half-open per axis, ``[[k0, k1], [j0, j1], [i0, i1]]``,
clipped to the image like nnInteractive does; one voxel thick along an axis makes it a 2D box. A
scribble or lasso is a mask over its ``interaction_bbox`` (half-open, inside the image), or over the
whole image when that is None; only the bounding box of its voxels is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from tsfm_backend.inference import prompt_conversion as conversion
from tsfm_backend.inference.prompt_conversion import ConvertedPrompt
from tsfm_backend.server.nninteractive.lease import PendingPrompt, Voxel

MASK_KINDS = ("scribble", "lasso")


class PromptRefused(ValueError):
    """A prompt that cannot apply to this image (answered 400 with the reason)."""


def point_prompt(coordinates: Sequence[float], positive: bool, shape: Voxel) -> PendingPrompt:
    """A click at (k, j, i), rounded to the nearest voxel, which must lie inside the image."""
    if len(coordinates) != 3:
        raise PromptRefused(f"a point needs three coordinates, got {len(coordinates)}")
    point = tuple(int(round(float(c))) for c in coordinates)
    if any(not 0 <= p < n for p, n in zip(point, shape, strict=True)):
        raise PromptRefused(f"point {list(point)} is outside the image of shape {list(shape)}")

    def convert(_: np.ndarray | None) -> ConvertedPrompt:
        return ConvertedPrompt(positive=(point,)) if positive else ConvertedPrompt(negative=(point,))

    return PendingPrompt(point, (1, 1, 1), convert)  # type: ignore[arg-type]


def box_prompt(bbox: Sequence[Sequence[float]], positive: bool, shape: Voxel,
               spacing: tuple[float, float, float]) -> PendingPrompt:
    """A half-open box, clipped to the image (at least one voxel thick along each axis)."""
    if len(bbox) != 3 or any(len(axis) != 2 for axis in bbox):
        raise PromptRefused(f"bbox_coords must be three [start, stop] pairs, got {bbox}")
    bounds = [(int(round(float(a))), int(round(float(b)))) for a, b in bbox]
    if any(b - a == 0 for a, b in bounds):
        raise PromptRefused(f"bounding box size is zero along at least one axis: {[list(b) for b in bounds]}")
    low, high = [], []
    for (start, stop), n in zip(bounds, shape, strict=True):
        start, stop = max(0, min(start, stop)), min(n, max(start, stop))
        if stop <= start:  # wholly outside on this axis: keep the nearest slab, as nnInteractive does
            start, stop = (0, 1) if start == 0 else (min(start, n) - 1, min(start, n))
        low.append(start)
        high.append(stop - 1)
    box = (tuple(low), tuple(high))
    size = tuple(h - lo + 1 for lo, h in zip(low, high, strict=True))
    return PendingPrompt(box[0], size, partial(conversion.box_prompt, box, positive, spacing))  # type: ignore[arg-type]


def mask_prompt(kind: str, mask: np.ndarray, interaction_bbox: Sequence[Sequence[int]] | None, positive: bool,
                shape: Voxel, spacing: tuple[float, float, float]) -> PendingPrompt | None:
    """A scribble or lasso mask placed at ``interaction_bbox``; None when it holds no voxel."""
    if kind not in MASK_KINDS:
        raise PromptRefused(f"mask prompt kind {kind!r} is not one of {MASK_KINDS}")
    if mask.ndim != 3:
        raise PromptRefused(f"a {kind} must be a 3D mask, got {mask.ndim} dimensions")
    if interaction_bbox is None:
        interaction_bbox = [[0, n] for n in shape]
    if len(interaction_bbox) != 3 or any(len(axis) != 2 for axis in interaction_bbox):
        raise PromptRefused(f"interaction_bbox must be three [start, stop] pairs, got {interaction_bbox}")
    bounds = [(int(a), int(b)) for a, b in interaction_bbox]
    if any(not 0 <= a < b <= n for (a, b), n in zip(bounds, shape, strict=True)):
        raise PromptRefused(f"interaction_bbox {[list(b) for b in bounds]} is empty or leaves the image of shape "
                            f"{list(shape)}")
    if list(mask.shape) != [b - a for a, b in bounds]:
        raise PromptRefused(f"{kind} of shape {list(mask.shape)} does not match interaction_bbox size "
                            f"{[b - a for a, b in bounds]}")
    region = conversion.bounding_box(mask != 0, tuple(a for a, _ in bounds))  # type: ignore[arg-type]
    if region is None:
        return None
    low, high = region
    crop = tuple(slice(lo - a, h - a + 1) for lo, h, (a, _) in zip(low, high, bounds, strict=True))
    voxels = np.ascontiguousarray(mask[crop] != 0)
    convert = conversion.scribble_prompt if kind == "scribble" else conversion.lasso_prompt
    size = tuple(h - lo + 1 for lo, h in zip(low, high, strict=True))

    def run(current: np.ndarray | None) -> ConvertedPrompt:
        return convert(voxels, low, spacing, positive, current)

    return PendingPrompt(low, size, run)  # type: ignore[arg-type]
