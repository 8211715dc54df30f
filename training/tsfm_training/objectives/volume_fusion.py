"""Volume Fusion self-supervision (MIS-FM): predict, per voxel, how two crops of one CT were blended.

From ONE volume take two random resized crops (scale U(0.7, 1.5) per axis, linear zoom to the patch size,
random flips, adaptive contrast + gamma, and with p 0.25 both inverted). Cut the patch into a regular grid
of blocks (one random block size per axis in [size_min, size_max], random offset); 70 % of the blocks get a
class k ~ U{1..K}, the rest 0. With alpha = k / K (so alpha in {0, 1/4, 1/2, 3/4, 1} for K = 4):
``fused = alpha·crop1 + (1 - alpha)·crop2``, and the network segments the K+1 = 5 classes with
0.5 Dice + 0.5 cross-entropy. All arrays are (D, H, W) = (K, J, I) float32; randomness comes from the
``numpy.random.Generator`` passed in, so a sampler can be replayed exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class VolumeFusionSettings:
    """PyMIC's defaults (``Crop4VolumeFusion`` + ``VolumeFusion``); ``patch_size`` is (D, H, W) voxels."""

    patch_size: tuple[int, int, int] = (64, 128, 128)
    scale_lower: tuple[float, float, float] = (0.7, 0.7, 0.7)
    scale_upper: tuple[float, float, float] = (1.5, 1.5, 1.5)
    augmentation_mode: int = 3  # 0 none, 1 intensity, 2 spatial (flips), 3 both
    num_classes: int = 5
    foreground_ratio: float = 0.7
    block_min: tuple[int, int, int] = (8, 8, 8)
    block_max: tuple[int, int, int] = (32, 32, 32)
    invert_probability: float = 0.25

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"Volume Fusion needs num_classes >= 2, got {self.num_classes}")
        if any(lo < 1 or lo > hi for lo, hi in zip(self.block_min, self.block_max, strict=True)):
            raise ValueError(f"block sizes need 1 <= block_min <= block_max, got {self.block_min}, {self.block_max}")


def random_resized_crop(volume: np.ndarray, output_size: Sequence[int], scale_lower: Sequence[float],
                        scale_upper: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """A crop of ``output_size·s`` voxels (s ~ U(lower, upper) per axis, capped at the volume), zoomed
    linearly to ``output_size``. volume (D, H, W) -> (output_size) float32."""
    scale = [lo + (hi - lo) * rng.random() for lo, hi in zip(scale_lower, scale_upper, strict=True)]
    crop = [max(1, min(int(out * s), size)) for out, s, size in zip(output_size, scale, volume.shape, strict=True)]
    start = [int(rng.integers(0, size - c + 1)) for size, c in zip(volume.shape, crop, strict=True)]
    patch = volume[tuple(slice(s, s + c) for s, c in zip(start, crop, strict=True))]
    zoom = [out / c for out, c in zip(output_size, crop, strict=True)]
    patch = ndimage.zoom(patch.astype(np.float32), zoom, order=1)
    # ndimage.zoom rounds the output shape; make it exact.
    return _fit(patch, output_size)


def _fit(patch: np.ndarray, size: Sequence[int]) -> np.ndarray:
    pad = [(0, max(0, s - p)) for p, s in zip(patch.shape, size, strict=True)]
    patch = np.pad(patch, pad, mode="edge") if any(p for _, p in pad) else patch
    return np.ascontiguousarray(patch[tuple(slice(0, s) for s in size)])


def random_flip(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip each axis independently with probability 0.5."""
    axes = tuple(axis for axis in range(patch.ndim) if rng.random() > 0.5)
    return np.ascontiguousarray(np.flip(patch, axes)) if axes else patch


def adaptive_contrast_adjust(patch: np.ndarray, p0: float, p1: float) -> np.ndarray:
    """Piecewise-linear map of intensities: [min, P(p0)] -> [0, 0.1], [P(p0), P(p1)] -> [0.1, 0.9],
    [P(p1), max] -> [0.9, 1], with P the percentiles of the patch."""
    lo, hi = float(patch.min()), float(patch.max())
    v0, v1 = np.percentile(patch, [p0, p1])
    xs = np.array([lo, max(v0, lo), max(v1, v0, lo), max(hi, v1, v0, lo)], dtype=np.float64)
    # np.interp needs strictly increasing knots; nudge ties (flat patches) apart.
    xs = xs + np.arange(4) * 1e-6 * max(1.0, abs(hi - lo))
    return np.interp(patch, xs, [0.0, 0.1, 0.9, 1.0]).astype(np.float32)


def gamma_correction(patch: np.ndarray, gamma: float) -> np.ndarray:
    """``x^gamma`` on the patch rescaled to [0, 1] (it already is after the contrast adjustment)."""
    lo, hi = float(patch.min()), float(patch.max())
    scaled = (patch - lo) / (hi - lo) if hi > lo else np.zeros_like(patch)
    return np.power(scaled, gamma).astype(np.float32)


def crop_pair(volume: np.ndarray, settings: VolumeFusionSettings,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two augmented views of one volume, each ``settings.patch_size``, float32."""
    if volume.ndim != 3:
        raise ValueError(f"Volume Fusion takes a (D, H, W) volume, got shape {volume.shape}")
    mode = settings.augmentation_mode
    lower, upper = (settings.scale_lower, settings.scale_upper) if mode >= 2 else ((1, 1, 1), (1, 1, 1))
    patches = [random_resized_crop(volume, settings.patch_size, lower, upper, rng) for _ in range(2)]
    if mode >= 2:
        patches = [random_flip(p, rng) for p in patches]
    if mode in (1, 3):
        adjusted = []
        for patch in patches:
            patch = adaptive_contrast_adjust(patch, rng.uniform(0.1, 2.0), rng.uniform(98.0, 99.9))
            adjusted.append(gamma_correction(patch, rng.uniform(0.7, 1.5)))
        patches = adjusted
        if rng.random() < settings.invert_probability:
            patches = [1.0 - p for p in patches]
    return patches[0], patches[1]


def fusion_mask(shape: Sequence[int], settings: VolumeFusionSettings, rng: np.random.Generator) -> np.ndarray:
    """(D, H, W) uint8 block map: a regular grid of blocks, ``foreground_ratio`` of them labelled 1..K."""
    k = settings.num_classes - 1
    block = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(settings.block_min, settings.block_max, strict=True)]
    block = [min(b, s) for b, s in zip(block, shape, strict=True)]
    offset = [int(rng.integers(0, s % b + 1)) for s, b in zip(shape, block, strict=True)]
    counts = [s // b for s, b in zip(shape, block, strict=True)]
    total = counts[0] * counts[1] * counts[2]
    foreground = np.zeros(total, dtype=bool)
    foreground[: int(total * settings.foreground_ratio)] = True
    rng.shuffle(foreground)
    classes = np.where(foreground, rng.integers(1, k + 1, size=total), 0).astype(np.uint8)
    grid = classes.reshape(counts)
    # Expand each grid cell to its block, then place the grid at its offset; the margins stay 0.
    expanded = grid.repeat(block[0], 0).repeat(block[1], 1).repeat(block[2], 2)
    mask = np.zeros(tuple(shape), dtype=np.uint8)
    mask[tuple(slice(o, o + e) for o, e in zip(offset, expanded.shape, strict=True))] = expanded
    return mask


def fuse(patch1: np.ndarray, patch2: np.ndarray, settings: VolumeFusionSettings,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fused image (D, H, W) float32, label (D, H, W) uint8 in [0, K]) with alpha = label / K."""
    if patch1.shape != patch2.shape:
        raise ValueError(f"fused patches must have the same shape, got {patch1.shape} and {patch2.shape}")
    mask = fusion_mask(patch1.shape, settings, rng)
    alpha = mask.astype(np.float32) / (settings.num_classes - 1)
    return (alpha * patch1 + (1.0 - alpha) * patch2).astype(np.float32), mask


def volume_fusion_sample(volume: np.ndarray, settings: VolumeFusionSettings,
                         rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One training pair: ``image`` (1, D, H, W) float32 and ``label`` (1, D, H, W) uint8."""
    fused, label = fuse(*crop_pair(volume, settings, rng), settings, rng)
    return {"image": fused[None], "label": label[None]}


def volume_fusion_criterion():
    """0.5 Dice (all 5 classes, background included, as PyMIC's DiceLoss) + 0.5 cross-entropy."""
    from tsfm_training.objectives.supervised import DeepSupervisionLoss, DiceCELoss

    return DeepSupervisionLoss(DiceCELoss(include_background=True, batch_dice=False, ce_weight=0.5,
                                          dice_weight=0.5))
