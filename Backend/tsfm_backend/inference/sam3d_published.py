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


def predict(prepared: PreparedVolume, clicks_kji: Sequence[Sequence[int]], predict_fn: PredictFn,
            crop_size: int, channels: int = 3) -> np.ndarray:
    """Steps 4-9: original-grid clicks (k, j, i) -> (K, J, I) uint8 mask of the object."""
    if not clicks_kji:
        raise ValueError("the published procedure needs at least one click")
    points = [click_to_resampled(p, prepared.shape, prepared.grid) for p in clicks_kji]
    box = place_crop(points, crop_size)
    probability = predict_fn(extract_crop(prepared.image, box, channels), crop_points(points, box))
    return to_image_grid(paste(probability, box, prepared.grid), prepared.shape)


def segment(array: np.ndarray, spacing_kji: Sequence[float], clicks_kji: Sequence[Sequence[int]],
            normalization: dict, predict_fn: PredictFn, crop_size: int, channels: int = 3) -> np.ndarray:
    """The whole procedure: (K, J, I) HU image, its spacing in mm and clicks -> (K, J, I) uint8 mask."""
    return predict(prepare(array, spacing_kji, normalization), clicks_kji, predict_fn, crop_size, channels)
