"""Where each class lies in a case, computed once at preprocessing time, and class-first patch centres.

nnU-Net stores, per case and class, a random subset of that class's voxel coordinates (at most 10,000,
but never fewer than 1 % of the class's voxels) and, when a patch must contain foreground, picks a
class first (uniformly among the classes the case holds) and then one of its stored voxels. With 104
classes this matters: sampling a foreground voxel uniformly would almost always land in the large
organs, and small structures (adrenal glands, vertebrae of the neck) would rarely be seen. MONAI's
``RandCropByLabelClassesd`` makes the same class-first choice; here it runs on precomputed locations so a
worker never scans a whole volume, and the crop itself reads only the patch from the memory map.

Locations are flat indices into the case's (Z, Y, X) grid, int64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

MAX_SAMPLES = 10_000
MIN_FRACTION = 0.01


def _subsample(indices: np.ndarray, rng: np.random.Generator, max_samples: int,
               min_fraction: float) -> np.ndarray:
    count = int(np.ceil(len(indices) * min_fraction))
    keep = max(min(max_samples, len(indices)), count)
    if keep >= len(indices):
        return indices.astype(np.int64)
    return np.sort(rng.choice(indices, size=keep, replace=False)).astype(np.int64)


def label_map_locations(label: np.ndarray, rng: np.random.Generator, max_samples: int = MAX_SAMPLES,
                        min_fraction: float = MIN_FRACTION) -> dict[int, np.ndarray]:
    """``{value: flat indices}`` for every non-zero value of ``label`` (Z, Y, X), subsampled as nnU-Net.

    One pass over the volume (sort the foreground voxels by value), not one pass per class.
    """
    flat = np.flatnonzero(label)
    if flat.size == 0:
        return {}
    values = label.reshape(-1)[flat]
    order = np.argsort(values, kind="stable")
    flat, values = flat[order], values[order]
    present, starts = np.unique(values, return_index=True)
    ends = list(starts[1:]) + [len(values)]
    return {int(v): _subsample(flat[s:e], rng, max_samples, min_fraction)
            for v, s, e in zip(present, starts, ends, strict=True)}


def mask_locations(masks: np.ndarray, values: Sequence[int], rng: np.random.Generator,
                   max_samples: int = MAX_SAMPLES, min_fraction: float = MIN_FRACTION) -> dict[int, np.ndarray]:
    """``{value: flat indices}`` for per-class binary masks (M, Z, Y, X); channel m is class ``values[m]``."""
    if len(values) != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} mask channels but {len(values)} class values")
    result = {}
    for value, mask in zip(values, masks, strict=True):
        flat = np.flatnonzero(mask)
        if flat.size:
            result[int(value)] = _subsample(flat, rng, max_samples, min_fraction)
    return result


def patch_centre(locations: Mapping[int, np.ndarray], eligible: Iterable[int], shape: Sequence[int],
                 rng: np.random.Generator, foreground: bool,
                 class_weights: Mapping[int, float] | None = None) -> tuple[int, ...]:
    """A voxel (z, y, x) of ``shape`` to centre a patch on.

    ``foreground``: a class drawn among ``eligible`` classes that have locations (uniformly, as nnU-Net;
    or in proportion to ``class_weights``, e.g. voxel counts, which is MONAI's ``RandCropByPosNegLabeld``:
    any foreground voxel alike), then one of its voxels; without such a class (or when not
    ``foreground``) a voxel drawn uniformly in the volume.
    """
    classes = sorted(c for c in eligible if c in locations)  # only classes with voxels have locations
    if foreground and classes:
        if class_weights is None:
            pick = int(rng.integers(len(classes)))
        else:
            weights = np.array([float(class_weights[c]) for c in classes])
            pick = int(rng.choice(len(classes), p=weights / weights.sum()))
        chosen = locations[classes[pick]]
        flat = int(chosen[int(rng.integers(len(chosen)))])
        return tuple(int(i) for i in np.unravel_index(flat, tuple(shape)))
    return tuple(int(rng.integers(0, s)) for s in shape)


def read_window(array: np.ndarray, centre: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """The (C, *size) block of ``array`` (C, Z, Y, X) centred on ``centre``; outside the volume is ``fill``.

    Only the block is read, so on a memory-mapped array the cost is the patch, not the case.
    """
    spatial = array.shape[1:]
    out = np.full((array.shape[0], *size), fill, dtype=array.dtype)
    source, target = [], []
    for c, s, n in zip(centre, size, spatial, strict=True):
        start = int(c) - int(s) // 2
        lo, hi = max(start, 0), min(start + int(s), n)
        if hi <= lo:
            return out
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[(slice(None), *target)] = array[(slice(None), *source)]
    return out
