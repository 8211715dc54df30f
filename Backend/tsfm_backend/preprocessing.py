"""From a volume on its own grid to the network's grid, and back, as the model card prescribes.

Forward (``prepare``): reorient (``kji`` keeps the array as stored; ``ras`` permutes and flips the
axes so they point to Right, Anterior, Superior), optionally crop to the body's bounding box,
normalise (per-image z-score, CT clip + dataset z-score, or HU window to [0, 1]), then resample
linearly to the card spacing with torch on the chosen device. Normalising before resampling is the
nnU-Net v2 order; for the z-score schemes it is identical to normalising after, because linear
interpolation commutes with an affine intensity map. Clipping does not commute with it: a card whose
normalisation says ``after_resampling`` (SuPreM's MONAI pipeline: ``Spacingd``, then
``ScaleIntensityRanged(clip=True)``) resamples the raw intensities first and clips on the network grid.

Inverse: the network grid maps back to the input grid by the same voxel-centre convention in both
directions, ``source = (target + 0.5) * source_size / target_size - 0.5`` per axis (the convention
of ``torch.nn.functional.interpolate(align_corners=False)`` and of nnU-Net's resize), then the crop
is undone by padding with background and the reorientation by the inverse permutation and flips.
The label map that comes out therefore has the input's shape, spacing, origin and direction exactly.

Axis convention: "network axes" are the array axes after reorientation; for ``kji`` they are (K, J, I).
The card's ``spacing`` and ``patch_size`` are given in network-axis order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tsfm_backend.model_card import ModelCard
from tsfm_backend.volume import Volume

CT_BODY_THRESHOLD_HU = -500.0
CT_AIR_HU = -500.0
BODY_MARGIN_MM = 10.0
# Lowest-to-highest world directions of the RAS network axes, as LPS unit vectors.
RAS_AXES_LPS = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class GridMap:
    """Everything needed to map the network grid back onto the input grid.

    Attributes:
        input_shape: shape of the input array, (K, J, I).
        permutation: network axis ``a`` is input array axis ``permutation[a]``.
        flips: per network axis, whether it runs opposite to the input axis.
        crop: per input array axis, the (start, stop) kept by the body crop.
        source_shape: shape after reorientation and crop, network-axis order, before resampling.
        network_shape: shape of the resampled grid the network sees.
        network_spacing: actual spacing in mm of that grid, network-axis order.
    """

    input_shape: tuple[int, int, int]
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    crop: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    source_shape: tuple[int, int, int]
    network_shape: tuple[int, int, int]
    network_spacing: tuple[float, float, float]


@dataclass
class Prepared:
    """The network input: ``image`` (C, Z, Y, X) float32 on the device, ``body`` (Z, Y, X) bool or None."""

    image: torch.Tensor
    body: torch.Tensor | None
    grid: GridMap


def orientation(volume: Volume, axis_order: str) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(permutation, flips) taking the (K, J, I) array to the card's axis order.

    For ``ras`` each network axis takes the array axis whose direction is closest to R, A or S
    (best of the six permutations, so oblique volumes are handled), flipped when it points away.
    """
    if axis_order == "kji":
        return (0, 1, 2), (False, False, False)
    if axis_order != "ras":
        raise ValueError(f"axis order {axis_order!r} is not 'kji' or 'ras'")
    # Column c of the direction matrix is the LPS direction of index axis c (I, J, K); array axis a is 2 - a.
    array_axis_dirs = volume.direction_matrix.T[::-1]
    dots = RAS_AXES_LPS @ array_axis_dirs.T  # dots[network axis, array axis]
    permutation = max(
        itertools.permutations(range(3)), key=lambda p: sum(abs(dots[a, p[a]]) for a in range(3))
    )
    flips = tuple(bool(dots[a, permutation[a]] < 0) for a in range(3))
    return tuple(permutation), flips  # type: ignore[return-value]


def reorient(array: np.ndarray, permutation: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """Input (K, J, I) array -> network-axis order (a view, no copy)."""
    out = np.transpose(array, permutation)
    return out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def undo_reorient(array: np.ndarray, permutation: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """Network-axis order -> input (K, J, I) array; the exact inverse of ``reorient``."""
    unflipped = array[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
    return np.transpose(unflipped, np.argsort(permutation))


def body_threshold(array: np.ndarray) -> float:
    """Intensity above which a voxel counts as body: -500 HU for CT (air present), else the image minimum."""
    low = float(array.min())
    return CT_BODY_THRESHOLD_HU if low <= CT_AIR_HU else low


def body_bounding_box(
    array: np.ndarray, spacing_kji: tuple[float, float, float], margin_mm: float = BODY_MARGIN_MM
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Per axis (start, stop) of the voxels above ``body_threshold``, widened by ``margin_mm``; whole image if none."""
    mask = array > body_threshold(array)
    if not mask.any():
        return tuple((0, n) for n in array.shape)  # type: ignore[return-value]
    box = []
    for axis, size in enumerate(array.shape):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        margin = int(np.ceil(margin_mm / spacing_kji[axis]))
        box.append((max(0, int(hits[0]) - margin), min(size, int(hits[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


def network_shape_for(
    shape: tuple[int, ...], spacing: tuple[float, ...], target_spacing: tuple[float, ...] | None
) -> tuple[int, int, int]:
    """Voxel counts after resampling ``shape`` at ``spacing`` to ``target_spacing`` (mm, same axis order)."""
    if target_spacing is None:
        return tuple(int(n) for n in shape)  # type: ignore[return-value]
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )  # type: ignore[return-value]


def normalize(image: torch.Tensor, normalization: dict) -> torch.Tensor:
    """Intensity normalisation of a float tensor by the card's scheme (new tensor, same shape).

    ``zscore``: per image, (x - mean) / max(std, 1e-8) over all voxels (STU-Net, nnU-Net "nonCT").
    ``ct_clip_zscore``: clip to [lower, upper] HU, then (x - mean) / std with the card's dataset values.
    ``hu_window``: clip to [lower, upper] HU and map linearly to [0, 1], or to ``output_range`` when the
    card gives one (PyMIC's ``NormalizeWithMinMax``, used by MIS-FM, maps to [-1, 1]).
    ``none``: unchanged.
    """
    scheme = normalization.get("scheme", "none")
    if scheme == "none":
        return image.clone()
    if scheme == "by_modality":
        raise ValueError("a 'by_modality' normalisation must be resolved for the image first "
                         "(tsfm_backend.modality.resolve_normalization)")
    if scheme == "zscore":
        std, mean = torch.std_mean(image.double(), correction=0)
        return (image - float(mean)) / max(float(std), 1e-8)
    try:
        lower, upper = float(normalization["lower"]), float(normalization["upper"])
    except KeyError as error:
        raise ValueError(
            f"normalization scheme {scheme!r} needs 'lower' and 'upper', missing {error}"
        ) from None
    if upper <= lower:
        raise ValueError(f"normalization window is empty: lower {lower} >= upper {upper}")
    clipped = image.clamp(lower, upper)
    if scheme == "hu_window":
        low, high = output_range(normalization)
        return (clipped - lower) / (upper - lower) * (high - low) + low
    if scheme == "ct_clip_zscore":
        if "mean" not in normalization or "std" not in normalization:
            raise ValueError("normalization scheme 'ct_clip_zscore' needs the dataset 'mean' and 'std'")
        return (clipped - float(normalization["mean"])) / max(float(normalization["std"]), 1e-8)
    raise ValueError(f"unknown normalization scheme {scheme!r}")


def output_range(normalization: dict) -> tuple[float, float]:
    """The (low, high) a ``hu_window`` maps its window to: ``output_range`` when given, else (0, 1)."""
    value = normalization.get("output_range", (0.0, 1.0))
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"normalization output_range must be two numbers [low, high], got {value!r}") from None
    if not high > low:
        raise ValueError(f"normalization output_range must rise (low < high), got {value!r}")
    return low, high


def resample_linear(image: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(C, Z, Y, X) -> (C, *shape) by trilinear interpolation with the voxel-centre convention."""
    if tuple(image.shape[1:]) == tuple(shape):
        return image
    return F.interpolate(image[None], size=shape, mode="trilinear", align_corners=False)[0]


def normalize_and_resample(image: torch.Tensor, normalization: dict, shape: tuple[int, int, int]) -> torch.Tensor:
    """(C, Z, Y, X) raw intensities -> normalised (C, *shape), in the order the card's normalisation
    gives: resampled first when it says ``after_resampling``, else normalised first."""
    if normalization.get("after_resampling", False):
        return normalize(resample_linear(image, shape), normalization)
    return resample_linear(normalize(image, normalization), shape)


def prepare(
    volume: Volume,
    card: ModelCard,
    device: torch.device | str = "cpu",
    crop_to_body: bool = False,
    with_body: bool = True,
) -> Prepared:
    """The network input for ``volume`` under ``card``, and the map back to the input grid.

    Returns ``Prepared.image`` (1, Z, Y, X) float32 on ``device`` in network-axis order at the card
    spacing (or the input spacing when the card has none), and ``Prepared.body``, a bool mask of the
    voxels above ``body_threshold`` on the same grid (None when ``with_body`` is False).
    """
    if card.in_channels != 1:
        raise ValueError(
            f"model {card.id!r} takes {card.in_channels} input channels; automatic segmentation reads one image"
        )
    permutation, flips = orientation(volume, card.axis_order)
    spacing = tuple(volume.spacing_kji[a] for a in permutation)
    if crop_to_body:
        crop = body_bounding_box(volume.array, volume.spacing_kji)
    else:
        crop = tuple((0, n) for n in volume.shape)
    cropped = volume.array[tuple(slice(a, b) for a, b in crop)]
    source = reorient(cropped, permutation, flips)
    network_shape = network_shape_for(source.shape, spacing, card.spacing)
    network_spacing = tuple(n * s / m for n, s, m in zip(source.shape, spacing, network_shape, strict=True))
    raw = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32)).to(device)[None]
    threshold = body_threshold(source) if with_body else None
    image = normalize_and_resample(raw, card.normalization, network_shape)
    body = None
    if threshold is not None:
        body = resample_linear((raw > threshold).to(torch.float32), network_shape)[0] > 0
    del raw
    grid = GridMap(
        input_shape=volume.shape,
        permutation=permutation,
        flips=flips,
        crop=crop,  # type: ignore[arg-type]
        source_shape=tuple(int(n) for n in source.shape),  # type: ignore[arg-type]
        network_shape=network_shape,
        network_spacing=network_spacing,  # type: ignore[arg-type]
    )
    return Prepared(image=image.contiguous(), body=body, grid=grid)


def nearest_source_indices(target_size: int, source_size: int) -> np.ndarray:
    """For each target voxel, the nearest source voxel under the voxel-centre convention."""
    centres = (np.arange(target_size) + 0.5) * (source_size / target_size)
    return np.clip(np.floor(centres).astype(np.int64), 0, source_size - 1)


def linear_source_weights(target_size: int, source_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, upper weight) per target voxel for linear interpolation from the source."""
    position = np.clip((np.arange(target_size) + 0.5) * (source_size / target_size) - 0.5, 0, source_size - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, source_size - 1)
    return lower, upper, (position - lower).astype(np.float32)


def labels_to_source(labels: np.ndarray, grid: GridMap) -> np.ndarray:
    """Network-grid labels -> the reoriented, cropped source grid by nearest neighbour."""
    index = [nearest_source_indices(m, n) for m, n in zip(grid.source_shape, labels.shape, strict=True)]
    return labels[np.ix_(*index)]


def source_to_input(source_labels: np.ndarray, grid: GridMap) -> np.ndarray:
    """Labels on the reoriented, cropped source grid -> the input (K, J, I) grid; outside the crop is 0."""
    cropped = undo_reorient(source_labels, grid.permutation, grid.flips)
    if cropped.shape == grid.input_shape:
        return np.ascontiguousarray(cropped)
    full = np.zeros(grid.input_shape, dtype=source_labels.dtype)
    full[tuple(slice(a, b) for a, b in grid.crop)] = cropped
    return full
