"""3DSAM-adapter's click procedure exactly as the authors evaluate it: whole volume in, mask out.

Pure functions; the network is passed as a callable. Sources are ``med-air/3DSAM-adapter`` @f4fb8f3,
folder ``3DSAM-adapter/`` (``test.py``, ``dataset/base_dataset.py``, ``dataset/datasets.py``):

1. Read the image as float32 with NaN set to 0, axes (D, H, W) = our (K, J, I), D the slice axis
   (``base_dataset.py:95,101``; ``datasets.py:18,30,42,54`` transpose the NIfTI to DHW). The spacing comes
   from the NIfTI header, float32 (``base_dataset.py:96``).
2. Resample the *whole volume* to the dataset's target spacing, 1 mm on every axis
   (``datasets.py:15,27,39,51``), with ``F.interpolate(mode="trilinear")`` and
   ``scale_factor = spacing / target`` (``base_dataset.py:144-154``): align_corners False, the given scale
   used for the sampling positions (source = (d + 0.5) / scale - 0.5) and the grid size
   ``floor(n * scale)`` (PyTorch's rule for a scale factor; not a round). Where the largest spacing is
   more than 8 times the smallest, the authors resample each slice in-plane (``mode="bilinear"``) and then
   along D (trilinear with scale (s_D, 1, 1)) instead (``base_dataset.py:105-131``).
   The label is not resampled for testing (``base_dataset.py:115,133,155``).
3. Clip to the dataset's HU window and z-score with the dataset's global mean and std, on the resampled
   grid: MONAI ``ScaleIntensityRanged(a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True)`` then
   ``NormalizeIntensityd(subtrahend=mean, divisor=std)`` (``base_dataset.py:181-189,333-342``;
   constants ``datasets.py:14-17,26-29,38-41,50-53``); then three identical channels
   (``base_dataset.py:176``).
4. Clicks: the authors draw them from the label resized to the resampled grid by nearest neighbour
   (``test.py:156,160-166``). A user click is a voxel of the original grid, so it becomes the middle voxel
   of the resampled voxels that this nearest resize maps onto it (``click_to_resampled``).
5. Crop centre: per axis ``(max + min) // 2`` of the clicks, the click itself for one click
   (``test.py:168-170``); the crop is ``[c - S//2, c + S//2)`` with S the crop size, 128
   (``test.py:62-64,127,172-177``).
6. Outside the volume the crop is padded with zeros *after* normalisation, i.e. with the dataset mean
   (``test.py:178-183,187-191``: ``F.pad`` constant 0).
7. Clicks in crop voxels: click - crop start, the unclamped start (``test.py:185``).
8. One forward pass; softmax channel 1 (``test.py:192-198``); the part of the crop inside the volume is
   pasted into a zero probability map on the resampled grid (``test.py:159,197,199``).
9. Back to the CT grid: ``F.interpolate(mode="trilinear", size=ct_shape)`` of the whole map, then
   ``> 0.5`` (``test.py:201-202``).

Steps 8-9 as written (``paste``, ``back_to_image``) hold two float maps of the whole volume per click. A
click runs them on the crop's footprint instead (``crop_on_image``): outside it the map is zero and so is
its interpolation, and inside it the same source indices, weights and roundings as the CPU kernel give
the same float32 values, so memory follows the crop and the mask is unchanged.

The authors feed clicks as float voxel indices in the order (D, W, H) to their prompt encoder
(``test.py:164-166,185``); our ``Sam3D.decode`` takes (a0, a1, a2) = (D, H, W) and reorders internally.
Unlike the cached path (``InteractiveSession`` with ``procedure: "cached"``), every click here works on
the whole resampled volume; the image embedding is still reused when the crop is the very same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Voxel = tuple[int, int, int]
# (1, C, S, S, S) crop and (N, 3) int64 crop clicks -> (S, S, S) object probability.
PredictFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TARGET_SPACING = (1.0, 1.0, 1.0)  # datasets.py:15,27,39,51
ANISOTROPY_2D = 8  # base_dataset.py:105
THRESHOLD = 0.5  # test.py:202


@dataclass(frozen=True)
class PreparedVolume:
    """The whole volume resampled and normalised as the authors' loader returns it.

    ``image`` is (D', H', W') float32 on the resampled grid (one channel; channels are repeated per crop);
    ``shape`` is the original (K, J, I) shape the mask returns to.
    """

    image: torch.Tensor
    shape: Voxel

    @property
    def grid(self) -> Voxel:
        return tuple(int(n) for n in self.image.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class CropBox:
    """A crop of size S placed on the resampled grid: ``start`` may be negative and ``start + S`` may pass
    the grid (those voxels are zero padding)."""

    start: Voxel
    size: int

    @property
    def end(self) -> Voxel:
        return tuple(s + self.size for s in self.start)  # type: ignore[return-value]

    def pads(self, grid: Voxel) -> tuple[Voxel, Voxel]:
        """(before, after) zero padding per axis (``test.py:178-183``)."""
        before = tuple(max(0, -s) for s in self.start)
        after = tuple(max(0, e - n) for e, n in zip(self.end, grid, strict=True))
        return before, after  # type: ignore[return-value]

    def inside(self, grid: Voxel) -> tuple[slice, slice, slice]:
        """The crop's part inside the grid, in grid voxels."""
        return tuple(slice(max(0, s), min(e, n)) for s, e, n in  # type: ignore[return-value]
                     zip(self.start, self.end, grid, strict=True))


def scale_factors(spacing_kji: Sequence[float], target: Sequence[float] = TARGET_SPACING) -> tuple[float, ...]:
    """``spacing / target`` per (K, J, I) axis as the authors compute it: a float32 NIfTI spacing divided in
    float32 (``base_dataset.py:96,148``)."""
    return tuple(float(np.float32(np.float32(s) / np.float32(t))) for s, t in zip(spacing_kji, target, strict=True))


def resampled_shape(shape: Sequence[int], spacing_kji: Sequence[float],
                    target: Sequence[float] = TARGET_SPACING) -> Voxel:
    """The grid ``F.interpolate(scale_factor=...)`` makes: ``floor(n * scale)`` per axis."""
    return tuple(int(np.floor(float(n) * f)) for n, f in  # type: ignore[return-value]
                 zip(shape, scale_factors(spacing_kji, target), strict=True))


def resample(array: np.ndarray, spacing_kji: Sequence[float], target: Sequence[float] = TARGET_SPACING) -> torch.Tensor:
    """(K, J, I) image -> (D', H', W') float32 on the target spacing, as ``base_dataset.py:101-154`` does."""
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).clone()
    image[torch.isnan(image)] = 0
    factors = scale_factors(spacing_kji, target)
    spacing = np.asarray([np.float32(s) for s in spacing_kji])
    if spacing.max() / spacing.min() > ANISOTROPY_2D:
        in_plane = F.interpolate(image[:, None], scale_factor=factors[1:], mode="bilinear")
        volume = in_plane[None].permute(0, 2, 1, 3, 4).contiguous()
        return F.interpolate(volume, scale_factor=(factors[0], 1, 1), mode="trilinear")[0, 0]
    return F.interpolate(image[None, None], scale_factor=factors, mode="trilinear")[0, 0]


def clip_and_zscore(image: torch.Tensor, lower: float, upper: float, mean: float, std: float) -> torch.Tensor:
    """MONAI 1.1's ``ScaleIntensityRange(lo, hi, lo, hi, clip=True)`` then ``NormalizeIntensity(mean, std)``,
    operation for operation in float32 (the identity rescale can move a value by one rounding step)."""
    image = image.to(torch.float32)
    image = (image - lower) / (upper - lower)
    image = image * (upper - lower) + lower
    image = torch.clamp(image, lower, upper)
    return (image - mean) / (std if std != 0 else 1.0)


def prepare(array: np.ndarray, spacing_kji: Sequence[float], normalization: dict) -> PreparedVolume:
    """Steps 1-3 for a (K, J, I) CT in HU; ``normalization`` is the card's ``ct_clip_zscore`` entry."""
    if normalization.get("scheme") != "ct_clip_zscore":
        raise ValueError("the published 3DSAM-adapter procedure needs a 'ct_clip_zscore' normalisation, got "
                         f"{normalization.get('scheme')!r}")
    image = clip_and_zscore(resample(array, spacing_kji), float(normalization["lower"]),
                            float(normalization["upper"]), float(normalization["mean"]), float(normalization["std"]))
    return PreparedVolume(image, tuple(int(n) for n in array.shape))  # type: ignore[arg-type]


def nearest_sources(size_in: int, size_out: int) -> np.ndarray:
    """For each resampled index, the original index ``F.interpolate(mode="nearest", size=...)`` reads
    (the kernel itself, so float32 rounding is the authors')."""
    ramp = torch.arange(size_in, dtype=torch.float32)[None, None, :, None]
    return F.interpolate(ramp, size=(size_out, 1), mode="nearest")[0, 0, :, 0].long().numpy()


def click_to_resampled(point_kji: Sequence[int], shape: Sequence[int], grid: Sequence[int]) -> Voxel:
    """An original-grid click -> the middle resampled voxel the nearest-resized click lands on (step 4).

    Where the grid shrinks, an original voxel may be read by no resampled voxel; then the resampled voxel
    reading the nearest original one is taken.
    """
    out = []
    for p, n, m in zip(point_kji, shape, grid, strict=True):
        sources = nearest_sources(int(n), int(m))
        hits = np.flatnonzero(sources == int(p))
        if hits.size == 0:
            hits = np.flatnonzero(np.abs(sources - int(p)) == np.abs(sources - int(p)).min())
        out.append(int(hits[(hits.size - 1) // 2]))
    return tuple(out)  # type: ignore[return-value]


def place_crop(points: Sequence[Sequence[int]], size: int) -> CropBox:
    """The crop around resampled-grid clicks: centre ``(max + min) // 2`` per axis, ``[c - S//2, c + S//2)``."""
    if size % 2:
        raise ValueError(f"the published crop is [c - S/2, c + S/2); S must be even, got {size}")
    array = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    centre = (array.max(0) + array.min(0)) // 2
    return CropBox(tuple(int(c) - size // 2 for c in centre), size)  # type: ignore[arg-type]


def extract_crop(image: torch.Tensor, box: CropBox, channels: int = 3) -> torch.Tensor:
    """(1, channels, S, S, S) crop of the (D', H', W') image, zeros outside it (``test.py:187-191``)."""
    before, after = box.pads(tuple(image.shape))  # type: ignore[arg-type]
    crop = image[box.inside(tuple(image.shape))]  # type: ignore[arg-type]
    crop = F.pad(crop[None, None], (before[2], after[2], before[1], after[1], before[0], after[0]))
    return crop.repeat(1, channels, 1, 1, 1)


def crop_points(points: Sequence[Sequence[int]], box: CropBox) -> torch.Tensor:
    """(N, 3) int64 clicks in crop voxels: click - unclamped crop start (``test.py:185``)."""
    return torch.as_tensor(np.asarray(points, dtype=np.int64).reshape(-1, 3) - np.asarray(box.start))


def paste(probability: torch.Tensor, box: CropBox, grid: Voxel) -> torch.Tensor:
    """(D', H', W') map: zeros, plus the crop's probability where the crop lies inside the grid."""
    before, after = box.pads(grid)
    size = box.size
    inner = probability[before[0]:size - after[0], before[1]:size - after[1], before[2]:size - after[2]]
    full = torch.zeros(grid, dtype=torch.float32)
    full[box.inside(grid)] += inner.to(torch.float32).cpu()
    return full


def back_to_image(probability: torch.Tensor, shape: Voxel) -> torch.Tensor:
    """Resampled-grid probability -> (K, J, I) probability: trilinear with ``size=shape`` (``test.py:201``)."""
    return F.interpolate(probability[None, None], size=tuple(shape), mode="trilinear")[0, 0]


def to_image_grid(probability: torch.Tensor, shape: Voxel, threshold: float = THRESHOLD) -> np.ndarray:
    """Resampled-grid probability -> (K, J, I) uint8 mask: ``back_to_image``, then ``> threshold``."""
    return (back_to_image(probability, shape) > threshold).to(torch.uint8).numpy()


def linear_weights(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output index along one axis: (low, high) source indices and their (w_low, w_high) float32 weights,
    as ``F.interpolate(mode="linear", size=size_out, align_corners=False)`` computes them on the CPU."""
    out = torch.arange(size_out, dtype=torch.float64)
    if size_in == size_out:
        low = out.long()
        return low, low, torch.ones(size_out), torch.zeros(size_out)
    scale = np.float32(size_in) / np.float32(size_out)
    # scale * (i + 0.5) - 0.5 is one fused multiply-add in the kernel: exact in float64, rounded once.
    real = (float(scale) * (out + 0.5) - 0.5).float().clamp(min=0)
    low = real.floor().long().clamp(max=size_in - 1)
    w_high = (real - low.float()).clamp(0, 1)
    high = low + (low < size_in - 1).long()
    return low, high, 1 - w_high, w_high


def _blend(low: torch.Tensor, high: torch.Tensor, w_low: torch.Tensor, w_high: torch.Tensor) -> torch.Tensor:
    """``low * w_low + high * w_high`` rounded as the CPU kernel rounds it: the first product fused onto the
    rounded second (float64 holds the product exactly, so one rounding to float32 remains)."""
    return (low.double() * w_low.double() + (high * w_high).double()).float()


def _interpolate_axis(block: torch.Tensor, axis: int, low: torch.Tensor, high: torch.Tensor,
                      w_low: torch.Tensor, w_high: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Linear interpolation of ``block`` along ``axis`` onto ``len(low)`` indices, ``chunk`` output slices at a
    time so the float64 temporaries stay a few slices large."""
    shape = list(block.shape)
    shape[axis] = len(low)
    out = torch.empty(shape, dtype=torch.float32)
    view = [1, 1, 1]
    view[axis] = -1
    for first in range(0, len(low), chunk):
        part = slice(first, first + chunk)
        out.narrow(axis, first, len(low[part])).copy_(
            _blend(block.index_select(axis, low[part]), block.index_select(axis, high[part]),
                   w_low[part].view(view), w_high[part].view(view)))
    return out


@dataclass(frozen=True)
class Footprint:
    """Where a pasted crop reaches on the CT grid: ``start`` (k, j, i) and the (K', J', I') ``values`` there;
    every voxel outside is 0 (probability) or background (mask)."""

    start: Voxel
    values: np.ndarray

    def into(self, shape: Voxel) -> np.ndarray:
        """The whole (K, J, I) array, zeros outside the footprint."""
        full = np.zeros(shape, dtype=self.values.dtype)
        full[tuple(slice(s, s + n) for s, n in zip(self.start, self.values.shape, strict=True))] = self.values
        return full


def crop_on_image(probability: torch.Tensor, box: CropBox, grid: Voxel, shape: Voxel) -> Footprint:
    """Steps 8-9 on the crop's footprint only: what ``back_to_image(paste(probability, box, grid), shape)``
    holds there, without the whole-grid maps (memory O(crop), not O(volume)).

    Each CT voxel's trilinear value reads a 2x2x2 neighbourhood of the resampled grid; outside the pasted
    crop that neighbourhood is zero, so only CT voxels with a source inside the crop can be non-zero.
    """
    inside = box.inside(grid)
    before, after = box.pads(grid)
    size = box.size
    inner = probability[before[0]:size - after[0], before[1]:size - after[1], before[2]:size - after[2]]
    # One zero on each side stands for every grid voxel outside the crop.
    block = F.pad(inner.to(torch.float32).cpu(), (1, 1, 1, 1, 1, 1))
    starts, tables = [], []
    for axis, (span, n_in, n_out) in enumerate(zip(inside, grid, shape, strict=True)):
        low, high, w_low, w_high = linear_weights(n_in, n_out)
        reached = ((low >= span.start) & (low < span.stop)) | ((high >= span.start) & (high < span.stop))
        hits = torch.nonzero(reached).flatten()
        if hits.numel() == 0:
            return Footprint((0, 0, 0), np.zeros((0, 0, 0), dtype=np.float32))
        first, last = int(hits[0]), int(hits[-1]) + 1
        local = [(idx[first:last] - span.start + 1).clamp(0, span.stop - span.start + 1) for idx in (low, high)]
        starts.append(first)
        tables.append((*local, w_low[first:last], w_high[first:last], axis))
    # Innermost axis first, as the kernel nests them: I, then J, then K.
    for low, high, w_low, w_high, axis in reversed(tables):
        block = _interpolate_axis(block, axis, low, high, w_low, w_high)
    return Footprint(tuple(starts), block.numpy())  # type: ignore[arg-type]


def predict_footprint(prepared: PreparedVolume, clicks_kji: Sequence[Sequence[int]], predict_fn: PredictFn,
                      crop_size: int, channels: int = 3, threshold: float = THRESHOLD) -> Footprint:
    """Steps 4-9 for one click set: the (K', J', I') uint8 mask where the crop reaches the CT grid; the
    rest of the published whole-image mask is background."""
    if not clicks_kji:
        raise ValueError("the published procedure needs at least one click")
    points = [click_to_resampled(p, prepared.shape, prepared.grid) for p in clicks_kji]
    box = place_crop(points, crop_size)
    probability = predict_fn(extract_crop(prepared.image, box, channels), crop_points(points, box))
    footprint = crop_on_image(probability, box, prepared.grid, prepared.shape)
    return Footprint(footprint.start, (footprint.values > threshold).astype(np.uint8))


def object_box(mask: np.ndarray) -> tuple[Voxel, Voxel] | None:
    """(start, stop) (k, j, i) of the smallest box holding every non-zero voxel of the (K, J, I) ``mask``; None
    when it has none. Reads the mask along K once, then only the slab of K that holds the object."""
    rows = np.flatnonzero(mask.any(axis=(1, 2)))
    if rows.size == 0:
        return None
    slab = mask[rows[0]:rows[-1] + 1]
    start, stop = [int(rows[0])], [int(rows[-1]) + 1]
    for axis in (1, 2):
        hits = np.flatnonzero(slab.any(axis=tuple(a for a in range(3) if a != axis)))
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    return tuple(start), tuple(stop)  # type: ignore[return-value]


def replacing(footprint: Footprint, previous: np.ndarray) -> Footprint:
    """The published whole-image mask (``footprint`` in an empty image) on the smallest box that holds the
    footprint and every voxel of the object's ``previous`` (K, J, I) mask.

    Written over ``previous`` this box gives exactly the whole-image mask: the footprint's values, and the
    previous voxels outside the footprint cleared; nothing outside the box changes. Its size follows the
    footprint and the previous object, not the image.
    """
    boxes = [] if footprint.values.size == 0 else [
        (footprint.start, tuple(s + n for s, n in zip(footprint.start, footprint.values.shape, strict=True)))]
    old = object_box(previous)
    if old is not None:
        boxes.append(old)
    if not boxes:
        return Footprint((0, 0, 0), np.zeros((0, 0, 0), dtype=np.uint8))
    start = tuple(min(box[0][axis] for box in boxes) for axis in range(3))
    stop = tuple(max(box[1][axis] for box in boxes) for axis in range(3))
    values = np.zeros(tuple(b - a for a, b in zip(start, stop, strict=True)), dtype=np.uint8)
    if footprint.values.size:
        values[tuple(slice(s - a, s - a + n) for s, a, n in
                     zip(footprint.start, start, footprint.values.shape, strict=True))] = footprint.values
    return Footprint(start, values)  # type: ignore[arg-type]


def predict(prepared: PreparedVolume, clicks_kji: Sequence[Sequence[int]], predict_fn: PredictFn,
            crop_size: int, channels: int = 3) -> np.ndarray:
    """Steps 4-9: original-grid clicks (k, j, i) -> (K, J, I) uint8 mask of the object (the footprint's mask
    in an otherwise empty image: one byte per voxel, no float map of the volume)."""
    return predict_footprint(prepared, clicks_kji, predict_fn, crop_size, channels).into(prepared.shape)


def segment(array: np.ndarray, spacing_kji: Sequence[float], clicks_kji: Sequence[Sequence[int]],
            normalization: dict, predict_fn: PredictFn, crop_size: int, channels: int = 3) -> np.ndarray:
    """The whole procedure: (K, J, I) HU image, its spacing in mm and clicks -> (K, J, I) uint8 mask."""
    return predict(prepare(array, spacing_kji, normalization), clicks_kji, predict_fn, crop_size, channels)
