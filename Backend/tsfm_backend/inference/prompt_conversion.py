"""Prompts the click/box engine does not take, turned into prompts it does: pure functions on arrays.

The interactive engine (``inference.interactive``) takes positive and negative clicks and positive
boxes (3D, or flat along one axis: a rectangle drawn on one slice). Viewers also send:

- a *scribble*: a painted stroke (a thin mask). It becomes clicks spread along the stroke, the first
  nearest the stroke's centre, then each next one as far (in mm) from the chosen ones as the stroke
  allows, until the stroke is covered to within ``click_spacing_mm`` or ``max_clicks`` are placed;
- a *lasso*: a closed contour filled on one slice. A positive lasso becomes the rectangle around the
  fill (flat along the slice axis) plus clicks deep inside the fill, the first at its deepest voxel;
- a *negative* box, lasso or scribble: the part of the object it covers is to go. It becomes negative
  clicks deep inside that part (nothing at all when it covers none of the object);
- a *degenerate box*, one voxel thick along two or three axes (a line or a point): clicks along it.

Regions are (K, J, I) masks cropped at ``origin`` (k, j, i) of the image; spacing is in mm, (K, J, I)
order; every click returned is a voxel of the image inside the region it came from. The cost of a
conversion is bounded by the region's size: distances are computed on at most ``MAX_SAMPLED_VOXELS``
voxels of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Voxel = tuple[int, int, int]
Box = tuple[Voxel, Voxel]

MAX_CLICKS = 3
CLICK_SPACING_MM = 15.0
# Interior clicks stay at least this share of the region's largest depth away from its border, so a
# click ball (5 mm for the bundled models) does not spill over the edge the user drew.
DEPTH_FRACTION = 0.5
MAX_SAMPLED_VOXELS = 1 << 16


@dataclass(frozen=True)
class ConvertedPrompt:
    """What the engine runs for one viewer prompt, in this order: the box, then the clicks.

    ``box`` is inclusive corners ((k0, j0, i0), (k1, j1, i1)) or None; ``positive`` and ``negative``
    are clicks (k, j, i). An empty prompt (no box, no clicks) changes nothing.
    """

    box: Box | None = None
    positive: tuple[Voxel, ...] = ()
    negative: tuple[Voxel, ...] = ()

    @property
    def empty(self) -> bool:
        return self.box is None and not self.positive and not self.negative


def spread_clicks(voxels: np.ndarray, spacing: tuple[float, float, float], start: np.ndarray,
                  max_clicks: int = MAX_CLICKS, click_spacing_mm: float = CLICK_SPACING_MM) -> list[Voxel]:
    """Farthest-point sampling of ``voxels`` (N, 3) in mm, from the voxel nearest ``start`` (k, j, i).

    Each next click is the voxel farthest from every click so far; sampling stops at ``max_clicks``
    or once no voxel is farther than ``click_spacing_mm`` from a click. Returns at least one click
    when ``voxels`` is not empty.
    """
    if len(voxels) == 0 or max_clicks < 1:
        return []
    scale = np.asarray(spacing, dtype=np.float64)
    points = voxels.astype(np.float64) * scale
    nearest = int(np.argmin(np.sum((points - np.asarray(start, dtype=np.float64) * scale) ** 2, axis=1)))
    chosen = [nearest]
    distance = np.sqrt(np.sum((points - points[nearest]) ** 2, axis=1))
    while len(chosen) < max_clicks:
        farthest = int(np.argmax(distance))
        if distance[farthest] <= click_spacing_mm:
            break
        chosen.append(farthest)
        distance = np.minimum(distance, np.sqrt(np.sum((points - points[farthest]) ** 2, axis=1)))
    return [tuple(int(v) for v in voxels[index]) for index in chosen]  # type: ignore[misc]


def clicks_along(stroke: np.ndarray, origin: Voxel, spacing: tuple[float, float, float],
                 max_clicks: int = MAX_CLICKS, click_spacing_mm: float = CLICK_SPACING_MM) -> list[Voxel]:
    """Clicks (image k, j, i) spread along a stroke (a (K, J, I) mask at ``origin``), the first mid-stroke."""
    voxels = _sampled(np.argwhere(stroke))
    if len(voxels) == 0:
        return []
    return _shifted(spread_clicks(voxels, spacing, voxels.mean(axis=0), max_clicks, click_spacing_mm), origin)


def clicks_inside(region: np.ndarray, origin: Voxel, spacing: tuple[float, float, float],
                  max_clicks: int = MAX_CLICKS, click_spacing_mm: float = CLICK_SPACING_MM) -> list[Voxel]:
    """Clicks (image k, j, i) deep inside a region (a (K, J, I) mask at ``origin``), the first at its deepest voxel.

    Depth is the distance in mm to the region's border within its own slice when the region is one
    slice thick (a lasso), else in 3D; the other clicks keep at least ``DEPTH_FRACTION`` of the
    deepest voxel's depth.
    """
    region = np.asarray(region, dtype=bool)
    if not region.any():
        return []
    flat = [axis for axis in range(3) if region.shape[axis] == 1]
    if flat:
        plane_spacing = [s for axis, s in enumerate(spacing) if axis != flat[0]]
        depth = ndimage.distance_transform_edt(np.pad(region.squeeze(flat[0]), 1), sampling=plane_spacing)
        depth = np.expand_dims(depth[1:-1, 1:-1], flat[0])
    else:
        depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    deepest = np.unravel_index(int(np.argmax(depth)), depth.shape)
    candidates = _sampled(np.argwhere(depth >= DEPTH_FRACTION * float(depth[deepest])))
    clicks = spread_clicks(candidates, spacing, np.asarray(deepest), max_clicks, click_spacing_mm)
    return _shifted(clicks, origin)


def bounding_box(region: np.ndarray, origin: Voxel) -> Box | None:
    """Inclusive corners (image k, j, i) of a region's voxels, or None when it is empty."""
    low, high = [], []
    for axis in range(3):
        hits = np.flatnonzero(np.asarray(region).any(axis=tuple(a for a in range(3) if a != axis)))
        if len(hits) == 0:
            return None
        low.append(int(hits[0]) + origin[axis])
        high.append(int(hits[-1]) + origin[axis])
    return tuple(low), tuple(high)  # type: ignore[return-value]


def flat_axes(box: Box) -> list[int]:
    """The axes along which an inclusive box is one voxel thick."""
    low, high = box
    return [axis for axis in range(3) if low[axis] == high[axis]]


def scribble_prompt(stroke: np.ndarray, origin: Voxel, spacing: tuple[float, float, float], positive: bool,
                    current: np.ndarray | None = None, max_clicks: int = MAX_CLICKS) -> ConvertedPrompt:
    """A scribble as clicks along it.

    ``current`` is the object's mask over the same crop (None: no mask yet). A positive stroke clicks
    where the object is still missing (anywhere on the stroke if it is all inside already); a negative
    one only where the stroke crosses the object, since elsewhere there is nothing to remove.
    """
    stroke = np.asarray(stroke, dtype=bool)
    inside = np.zeros_like(stroke) if current is None else stroke & (np.asarray(current) > 0)
    if positive:
        missing = stroke & ~inside
        return ConvertedPrompt(positive=tuple(clicks_along(missing if missing.any() else stroke, origin, spacing,
                                                           max_clicks)))
    return ConvertedPrompt(negative=tuple(clicks_along(inside, origin, spacing, max_clicks)))


def lasso_prompt(fill: np.ndarray, origin: Voxel, spacing: tuple[float, float, float], positive: bool,
                 current: np.ndarray | None = None, max_clicks: int = MAX_CLICKS) -> ConvertedPrompt:
    """A filled lasso as the rectangle around it plus clicks deep inside (positive), or negative clicks
    deep inside the part of the object it covers (negative)."""
    fill = np.asarray(fill, dtype=bool)
    if not positive:
        return negative_region_prompt(fill, origin, spacing, current, max_clicks)
    box = bounding_box(fill, origin)
    if box is None:
        return ConvertedPrompt()
    return ConvertedPrompt(box=box, positive=tuple(clicks_inside(fill, origin, spacing, max_clicks)))


def box_prompt(box: Box, positive: bool, spacing: tuple[float, float, float], current: np.ndarray | None = None,
               max_clicks: int = MAX_CLICKS) -> ConvertedPrompt:
    """An inclusive box as the engine takes it.

    A positive box flat along at most one axis stays a box; a line or a point (flat along two or three
    axes) becomes clicks along it. A negative box becomes negative clicks deep inside the part of the
    object it holds; ``current`` is the object's mask over the box (None: no mask yet).
    """
    low, high = box
    shape = tuple(h - lo + 1 for lo, h in zip(low, high, strict=True))
    if not positive:
        return negative_region_prompt(np.ones(shape, dtype=bool), low, spacing, current, max_clicks)
    if len(flat_axes(box)) <= 1:
        return ConvertedPrompt(box=box)
    return ConvertedPrompt(positive=tuple(clicks_along(np.ones(shape, dtype=bool), low, spacing, max_clicks)))


def negative_region_prompt(region: np.ndarray, origin: Voxel, spacing: tuple[float, float, float],
                           current: np.ndarray | None, max_clicks: int = MAX_CLICKS) -> ConvertedPrompt:
    """Negative clicks deep inside the part of the object (``current``, same crop) that ``region`` covers."""
    if current is None:
        return ConvertedPrompt()
    covered = np.asarray(region, dtype=bool) & (np.asarray(current) > 0)
    return ConvertedPrompt(negative=tuple(clicks_inside(covered, origin, spacing, max_clicks)))


def _sampled(voxels: np.ndarray) -> np.ndarray:
    """At most ``MAX_SAMPLED_VOXELS`` of ``voxels``, evenly strided (keeps sampling cost bounded)."""
    if len(voxels) <= MAX_SAMPLED_VOXELS:
        return voxels
    return voxels[:: math.ceil(len(voxels) / MAX_SAMPLED_VOXELS)]


def _shifted(clicks: list[Voxel], origin: Voxel) -> list[Voxel]:
    return [tuple(int(c) + int(o) for c, o in zip(click, origin, strict=True)) for click in clicks]  # type: ignore[misc]
