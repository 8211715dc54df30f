"""Region-of-interest geometry for interactive segmentation: pure functions on voxel boxes.

An ``Roi`` is a box of the image grid (``start`` may be negative and ``start + size`` may pass the
image: those parts are padding) together with the size of the model grid it is resampled to. Image
voxel centres map to model-grid coordinates by the voxel-centre convention of
``torch.nn.functional.interpolate(align_corners=False)``: ``g = (p - start + 0.5) * grid / size - 0.5``.

All tuples are (K, J, I).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Voxel = tuple[int, int, int]
# Maps a wanted ROI size (image voxels) to the (size, grid) actually used: the grid is rounded to the
# network's divisor and the size follows from the grid, so the model always sees its own spacing.
Fit = Callable[[Voxel], tuple[Voxel, Voxel]]

# A prompt this close to the ROI border (as a fraction of its size) moves the ROI.
EDGE_FRACTION = 0.1
# Growing adds this fraction of the base size as a margin on each side of the mask.
GROW_MARGIN_FRACTION = 0.25
# The ROI never grows beyond this many base sizes along an axis, which bounds the time per click.
MAX_SIZE_FACTOR = 2


@dataclass(frozen=True)
class Roi:
    """A box of ``size`` image voxels from ``start`` (k, j, i), resampled to ``grid`` model voxels."""

    start: Voxel
    size: Voxel
    grid: Voxel


def centred(points: Sequence[Voxel], size: Voxel, grid: Voxel) -> Roi:
    """The ROI of ``size`` centred on the midpoint of the points' bounding box."""
    coords = np.asarray(points, dtype=float).reshape(-1, 3)
    centre = (coords.min(0) + coords.max(0)) / 2.0
    start = tuple(int(round(c - (n - 1) / 2.0)) for c, n in zip(centre, size, strict=True))
    return Roi(start, tuple(int(n) for n in size), tuple(int(g) for g in grid))  # type: ignore[arg-type]


def _covering(low: np.ndarray, high: np.ndarray, minimum: Voxel, base: Voxel, shape: Voxel,
              fit: Fit) -> Roi:
    """The ROI centred on [low, high] (inclusive) plus a margin, at least ``minimum`` in size.

    It never exceeds ``MAX_SIZE_FACTOR`` base sizes, nor the image where the image is larger than the
    base, and it is shifted to stay inside the image along every axis the image is longer than the ROI.
    """
    margin = np.asarray([int(n * GROW_MARGIN_FRACTION) for n in base])
    extent = high - low + 1 + 2 * margin
    size = []
    for e, lower, b, n in zip(extent, minimum, base, shape, strict=True):
        size.append(int(min(max(e, lower), b * MAX_SIZE_FACTOR, max(b, n))))
    centre = (low + high) / 2.0
    size, grid = fit(tuple(size))  # type: ignore[arg-type]
    start = []
    for c, n, limit in zip(centre, size, shape, strict=True):
        first = int(round(c - (n - 1) / 2.0))
        start.append(min(max(first, 0), limit - n) if n <= limit else min(max(first, limit - n), 0))
    return Roi(tuple(start), size, grid)  # type: ignore[arg-type]


def well_inside(point: Sequence[int], roi: Roi) -> bool:
    """True when ``point`` (k, j, i) lies inside ``roi`` and at least ``EDGE_FRACTION`` of it from its faces."""
    edge = np.maximum(1, (np.asarray(roi.size) * EDGE_FRACTION).astype(int))
    low = np.asarray(roi.start) + edge
    high = np.asarray(roi.start) + np.asarray(roi.size) - 1 - edge
    return bool(np.all((np.asarray(point) >= low) & (np.asarray(point) <= high)))


def place(current: Roi | None, points: Sequence[Voxel], base: Voxel, shape: Voxel, fit: Fit) -> Roi:
    """The ROI for an object's prompts (the newest last).

    ``current`` while the newest prompt sits well inside it; else a new ROI of at least ``base``
    covering all prompts with a margin; and when the prompts spread wider than the largest ROI, one
    of ``base`` size around the newest prompt (a local correction far from the rest).
    """
    coords = np.asarray(points, dtype=int).reshape(-1, 3)
    newest = coords[-1]
    if current is not None and well_inside(newest, current):
        return current
    roi = _covering(coords.min(0), coords.max(0), base, base, shape, fit)
    if not well_inside(newest, roi):
        roi = _covering(newest, newest, base, base, shape, fit)
    return roi


def touches_inner_border(region: np.ndarray, roi: Roi, shape: Voxel) -> bool:
    """True when the ROI's mask ``region`` reaches a face of the ROI that lies inside the image."""
    for axis in range(3):
        first = np.take(region, 0, axis=axis)
        last = np.take(region, region.shape[axis] - 1, axis=axis)
        if roi.start[axis] > 0 and first.any():
            return True
        if roi.start[axis] + roi.size[axis] < shape[axis] and last.any():
            return True
    return False


def grow(roi: Roi, region: np.ndarray, points: Sequence[Voxel], base: Voxel, shape: Voxel,
         fit: Fit) -> Roi:
    """A larger ROI covering the mask found in ``roi`` and the prompts, with a margin on every side.

    Never smaller than ``roi``; bounded as ``_covering`` says.
    """
    found = np.argwhere(region) + np.asarray(roi.start)
    coords = np.concatenate([found, np.asarray(points, dtype=int).reshape(-1, 3)])
    return _covering(coords.min(0), coords.max(0), roi.size, base, shape, fit)


def around_mask(mask: np.ndarray, base: Voxel, fit: Fit) -> Roi:
    """The ROI covering a non-empty (K, J, I) mask with a margin (used when a mask is seeded)."""
    coords = np.argwhere(mask)
    return _covering(coords.min(0), coords.max(0), base, base, mask.shape, fit)  # type: ignore[arg-type]


def overlap(roi: Roi, shape: Voxel) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(slices into an ROI-sized array, slices into the image) of the part of the ROI inside the image."""
    inner, outer = [], []
    for start, size, limit in zip(roi.start, roi.size, shape, strict=True):
        low, high = max(start, 0), min(start + size, limit)
        high = max(high, low)
        outer.append(slice(low, high))
        inner.append(slice(low - start, high - start))
    return tuple(inner), tuple(outer)


def crop(array: np.ndarray, roi: Roi, fill: float) -> np.ndarray:
    """The ROI of ``array`` (K, J, I), padded with ``fill`` where it leaves the image."""
    out = np.full(roi.size, fill, dtype=array.dtype)
    inner, outer = overlap(roi, array.shape)  # type: ignore[arg-type]
    out[inner] = array[outer]
    return out


def image_to_grid(point: Sequence[float], roi: Roi) -> tuple[float, float, float]:
    """Model-grid coordinates (k, j, i) of an image voxel (voxel-centre convention)."""
    return tuple(  # type: ignore[return-value]
        (float(p) - s + 0.5) * g / n - 0.5 for p, s, n, g in zip(point, roi.start, roi.size, roi.grid, strict=True))
