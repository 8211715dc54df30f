"""SAM-Med3D's click procedure as the authors run it, around the user's clicks.

Sources: uni-medical/SAM-Med3D @f3de1fa, ``utils/infer_utils.py`` (``validate_paired_img_gt``,
``data_preprocess``, ``sam_model_infer``, ``data_postprocess``, last changed 2025-05-20) with TorchIO
0.20.8 (the release of that time; the code uses TorchIO internals that 1.2 no longer has) and SimpleITK
doing the resampling. Their steps, and ours:

1. ``tio.Resample(1.5)``: the image is resampled, in its own voxel axes, to 1.5 mm with SimpleITK's linear
   interpolator onto ``ceil(n * spacing / 1.5)`` voxels per axis whose first voxel's corner is the image's
   first voxel's corner (``resampled_shape``, ``Grid``); resampled voxels whose centre lies beyond the
   image's last half voxel are 0. The result keeps the image's pixel type (an int16 CT stays int16:
   SimpleITK truncates the interpolated value). Only the crop's voxels are computed here
   (``extract_crop``): linear interpolation is local, so they are the very values of the whole resampled
   image.
2. ``tio.ToCanonical``: axes reordered and flipped to RAS (``preprocessing.orientation``).
3. ``tio.CropOrPad(mask_name="label", target_shape=128^3)``: a 128^3 crop centred on the bounding box
   of the object, zero padding outside the image (``place_crop``). The authors take the box of the ground
   truth; we take the box of the object clicks (one click: the crop is centred on it).
4. ``tio.ZNormalization(masking_method=lambda x: x > 0)`` on the crop: mean and (unbiased) standard
   deviation of its voxels above 0, padding included in what is normalised (``normalize_crop``).
5. ``sam_model_infer``: one image embedding per crop; clicks accumulate, label 1 (object) or 0
   (background), and each click runs the prompt encoder with *all* clicks so far and the previous
   low-resolution logits (zeros before the first click), then the mask decoder (``run_clicks``). The
   authors draw clicks from the ground truth; we take the user's, in the order given.
6. Logits upsampled (trilinear) to the crop, ``sigmoid > 0.5`` (``crop_mask``), and put back on the image
   grid with nearest-neighbour sampling, zero outside the crop (``paste``, ``data_postprocess``).

A click is the resampled voxel nearest to its voxel's centre (``click_to_canonical``). The crop stays
where it is while the clicks fall inside it; a click outside moves it onto the box of the object clicks
and the clicks inside the new crop are replayed from a zero mask (``crop_for_clicks``,
``SamMed3DPredictor``). Both are pure
functions of the click sequence, so undo needs no state of its own.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tsfm_backend.preprocessing import orientation
from tsfm_backend.volume import Volume

Voxel = tuple[int, int, int]
Click = tuple[Voxel, bool]  # (k, j, i) on the image grid, True for an object click
# (points (1, N, 3) float crop voxels, labels (1, N) float, previous logits or None) -> new logits.
DecodeFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
THRESHOLD = 0.5  # infer_utils.py: sigmoid > 0.5


class SamMed3DInputError(ValueError):
    """An image or click sequence the procedure cannot run on (the message says what to change)."""


@dataclass(frozen=True)
class Grid:
    """An image's grid and the authors' resampled, reoriented grid of it.

    ``shape``/``spacing`` are the image's (K, J, I) voxels and mm; ``resampled`` the voxel counts after
    ``tio.Resample(target)`` in the same axes; ``permutation``/``flips`` take (K, J, I) axes to the
    canonical (R, A, S) axes of the crop, as ``preprocessing.reorient`` does.
    """

    shape: Voxel
    spacing: tuple[float, float, float]
    resampled: Voxel
    permutation: Voxel
    flips: tuple[bool, bool, bool]
    target: float

    @property
    def canonical(self) -> Voxel:
        """The resampled grid's voxel counts in canonical (R, A, S) order."""
        return tuple(self.resampled[a] for a in self.permutation)  # type: ignore[return-value]

    def to_resampled(self, axis: int, index: np.ndarray | float) -> np.ndarray | float:
        """Continuous resampled index of image index ``index`` along (K, J, I) axis ``axis``: both grids
        start at the same voxel corner, the resampled one has ``target`` mm voxels."""
        return (index + 0.5) * (self.spacing[axis] / self.target) - 0.5

    def to_image(self, axis: int, index: np.ndarray | float) -> np.ndarray | float:
        """Continuous image index of resampled index ``index`` along (K, J, I) axis ``axis`` (TorchIO's
        origin at image index ``(target / spacing - 1) / 2``)."""
        ratio = self.target / self.spacing[axis]
        return 0.5 * (ratio - 1) + index * ratio


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: float) -> Voxel:
    """``tio.Resample``'s grid: ``ceil(n * spacing / target)`` per axis, singleton axes kept."""
    return tuple(1 if n == 1 else int(np.ceil(n * s / target))  # type: ignore[return-value]
                 for n, s in zip(shape, spacing, strict=True))


def grid_for(volume: Volume, target: float) -> Grid:
    """The resampled, canonical grid of ``volume`` at ``target`` mm; refuses an image too small for it."""
    resampled = resampled_shape(volume.shape, volume.spacing_kji, target)
    if min(resampled) < 1:
        raise SamMed3DInputError(f"the image spans less than one {target:g} mm voxel along an axis "
                                 f"(shape {volume.shape}, spacing {volume.spacing_kji} mm)")
    permutation, flips = orientation(volume, "ras")
    return Grid(volume.shape, volume.spacing_kji, resampled, permutation, flips, float(target))


def click_to_canonical(grid: Grid, point: Sequence[int]) -> Voxel:
    """The canonical resampled voxel nearest to the centre of image voxel ``point`` (k, j, i)."""
    resampled = [min(max(int(np.floor(grid.to_resampled(a, float(p)) + 0.5)), 0), grid.resampled[a] - 1)
                 for a, p in enumerate(point)]
    return tuple(grid.resampled[a] - 1 - resampled[a] if grid.flips[c] else resampled[a]  # type: ignore[return-value]
                 for c, a in enumerate(grid.permutation))


def place_crop(low: Sequence[int], high: Sequence[int], size: int) -> Voxel:
    """Start of ``tio.CropOrPad``'s crop of ``size`` around the box [low, high] (inclusive voxels).

    The box centre is ``(low + high + 1) / 2``; when that is a half voxel and ``size`` even (or a whole
    voxel and ``size`` odd) it moves half a voxel down, as TorchIO does.
    """
    start = []
    for lo, hi in zip(low, high, strict=True):
        centre = (lo + hi + 1) / 2
        if (size % 2 == 0) ^ (centre % 1 == 0):
            centre -= 0.5
        start.append(int(centre - size / 2))
    return tuple(start)  # type: ignore[return-value]


def inside_crop(point: Sequence[int], start: Sequence[int], size: int) -> bool:
    return all(s <= p < s + size for p, s in zip(point, start, strict=True))


def crop_for_clicks(canonical_clicks: Sequence[Click], size: int) -> Voxel:
    """The crop start after a click sequence (canonical voxels): centred on the first object click, moved
    onto the box of the object clicks whenever a click falls outside it."""
    start: Voxel | None = None
    objects: list[Voxel] = []
    for point, positive in canonical_clicks:
        if positive:
            objects.append(point)
        if start is None or not inside_crop(point, start, size):
            if not objects:
                raise SamMed3DInputError("the first click on an object must mark the object (a positive click)")
            start = place_crop(np.min(objects, axis=0), np.max(objects, axis=0), size)
    if start is None:
        raise SamMed3DInputError("no clicks")
    return start


def _crop_axis(grid: Grid, canonical_axis: int, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each crop voxel along one canonical axis: (whether it has an image value: inside the resampled
    grid and SimpleITK's buffer [-0.5, n - 0.5), continuous image index)."""
    axis = grid.permutation[canonical_axis]
    m = grid.resampled[axis]
    canonical = np.arange(start, start + size)
    resampled = m - 1 - canonical if grid.flips[canonical_axis] else canonical
    position = np.asarray(grid.to_image(axis, resampled.astype(np.float64)))
    inside = (canonical >= 0) & (canonical < m) & (position >= -0.5) & (position < grid.shape[axis] - 0.5)
    return inside, position


def _linear_weights(position: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SimpleITK's linear interpolator along one axis: (lower index, upper index, weight of the upper),
    the border half voxel taking the edge value."""
    clamped = np.clip(position, 0.0, n - 1)
    lower = np.floor(clamped).astype(np.int64)
    upper = np.minimum(lower + 1, n - 1)
    return lower, upper, clamped - lower


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """ITK's cast of interpolated doubles to the image's pixel type: clamped and truncated for integers."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.trunc(np.clip(values, info.min, info.max)).astype(dtype)
    return values.astype(dtype)


def extract_crop(array: np.ndarray, grid: Grid, start: Sequence[int], size: int) -> np.ndarray:
    """The (size, size, size) canonical crop of the resampled image, zero outside it, in ``array``'s dtype.

    ``array`` is the (K, J, I) image. Trilinear interpolation in float64 along I, then J, then K (the
    order of SimpleITK's linear interpolator). Memory is bounded by a few ``size^3`` float64 arrays.
    """
    axes = [_crop_axis(grid, c, int(start[c]), size) for c in range(3)]
    # Per image axis (K, J, I): the crop axis it feeds and the interpolation along it.
    by_image_axis = [axes[list(grid.permutation).index(a)] for a in range(3)]
    weights = [_linear_weights(position, grid.shape[a]) for a, (_, position) in enumerate(by_image_axis)]
    (k0, k1, wk), (j0, j1, wj), (i0, i1, wi) = weights

    def corner(k: np.ndarray, j: np.ndarray, i: np.ndarray) -> np.ndarray:
        return array[np.ix_(k, j, i)].astype(np.float64)

    def along_i(k: np.ndarray, j: np.ndarray) -> np.ndarray:
        low = corner(k, j, i0)
        return low + (corner(k, j, i1) - low) * wi[None, None, :]

    def along_j(k: np.ndarray) -> np.ndarray:
        low = along_i(k, j0)
        return low + (along_i(k, j1) - low) * wj[None, :, None]

    low = along_j(k0)
    values = _cast_like(low + (along_j(k1) - low) * wk[:, None, None], array.dtype)
    inside = by_image_axis[0][0][:, None, None] & by_image_axis[1][0][None, :, None] & by_image_axis[2][0][None, None, :]
    values = np.where(inside, values, np.zeros((), dtype=values.dtype))
    # (K, J, I)-ordered crop -> canonical order, flips already applied through the sampled positions.
    return np.ascontiguousarray(np.transpose(values, grid.permutation))


def normalize_crop(crop: np.ndarray) -> torch.Tensor:
    """(1, 1, S, S, S) float32: ``tio.ZNormalization(masking_method=lambda x: x > 0)`` of the crop."""
    tensor = torch.from_numpy(np.ascontiguousarray(crop))[None].clone().float()
    values = tensor[tensor > 0]
    if values.numel() < 2:
        raise SamMed3DInputError(
            "the model's crop around the clicks holds fewer than two voxels above 0, and SAM-Med3D normalises "
            "over those (CT: tissue denser than water); click inside the body, on the structure itself")
    mean, std = values.mean(), values.std()
    if std == 0:
        raise SamMed3DInputError("every voxel above 0 in the model's crop has the same value; SAM-Med3D "
                                 "cannot normalise it")
    tensor -= mean
    tensor /= std
    return tensor[None]


def decode_step(decode: DecodeFn, crop_clicks: Sequence[tuple[Sequence[int], bool]],
                previous: torch.Tensor | None, low_res_size: int, device: torch.device) -> torch.Tensor:
    """One turn of ``sam_model_infer``'s loop: the prompt holds every click so far (crop voxels, in order,
    True for object clicks) and the logits of the turn before, zeros (1, 1, L, L, L) before the first."""
    if previous is None:
        previous = torch.zeros((1, 1, low_res_size, low_res_size, low_res_size), device=device)
    points = torch.tensor([[[float(v) for v in p] for p, _ in crop_clicks]], dtype=torch.float32, device=device)
    labels = torch.tensor([[1.0 if positive else 0.0 for _, positive in crop_clicks]], device=device)
    return decode(points, labels, previous)


def crop_mask(low_res: torch.Tensor, size: int) -> np.ndarray:
    """(size, size, size) bool crop mask: logits upsampled trilinearly, ``sigmoid > 0.5``."""
    high = F.interpolate(low_res, size=(size, size, size), mode="trilinear", align_corners=False)
    return (torch.sigmoid(high) > THRESHOLD)[0, 0].cpu().numpy()


def footprint(grid: Grid, start: Sequence[int], size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per image axis (K, J, I): the image indices whose nearest crop voxel lies inside the crop, and
    that crop index (SimpleITK's nearest neighbour: round half up, inside [-0.5, size - 0.5))."""
    indices, crop_indices = [], []
    for axis in range(3):
        c = list(grid.permutation).index(axis)
        p = np.arange(grid.shape[axis], dtype=np.float64)
        resampled = np.asarray(grid.to_resampled(axis, p))
        canonical = grid.resampled[axis] - 1 - resampled if grid.flips[c] else resampled
        position = canonical - int(start[c])
        keep = (position >= -0.5) & (position < size - 0.5)
        indices.append(np.flatnonzero(keep))
        crop_indices.append(np.floor(position[keep] + 0.5).astype(np.int64))
    return indices, crop_indices


def footprint_voxels(grid: Grid, start: Sequence[int], size: int) -> int:
    """Image voxels the crop covers (what ``paste`` allocates), computed without allocating them."""
    indices, _ = footprint(grid, start, size)
    return math.prod(len(i) for i in indices)


def paste(mask: np.ndarray, grid: Grid, start: Sequence[int]) -> tuple[Voxel, np.ndarray]:
    """(origin (k, j, i), uint8 mask) of the canonical crop ``mask`` on the image grid, covering the crop's
    footprint; empty (shape with a 0) where the crop misses the image."""
    size = mask.shape[0]
    indices, crop_indices = footprint(grid, start, size)
    if any(len(i) == 0 for i in indices):
        return (0, 0, 0), np.zeros((0, 0, 0), dtype=np.uint8)
    in_kji = np.transpose(mask, np.argsort(grid.permutation))
    region = in_kji[np.ix_(*crop_indices)].astype(np.uint8)
    return tuple(int(i[0]) for i in indices), region  # type: ignore[return-value]


class SamMed3DPredictor:
    """The procedure on one image with a ``SamMed3D`` network: image embeddings cached per crop, and the
    logits after every click prefix, so a further click costs one prompt-encoder and decoder pass.

    Args:
        network: a ``SamMed3D`` (moved to ``device``, eval mode).
        volume: the image, (K, J, I) voxels in HU for CT.
        target_spacing: the model's isotropic spacing in mm (1.5 as released).
        cache_size: crops whose embedding is kept (least recently used dropped); the logits of up to
            ``16 * cache_size`` click prefixes are kept likewise.
    """

    def __init__(self, network: torch.nn.Module, volume: Volume, target_spacing: float,
                 device: torch.device, cache_size: int = 2) -> None:
        from tsfm_backend.models.sam_med3d import SamMed3D

        if not isinstance(network, SamMed3D):
            raise TypeError(f"SamMed3DPredictor needs a sam_med3d network, got {type(network).__name__}")
        self.network = network.to(device).eval()
        self.device = device
        self.array = volume.array
        self.grid = grid_for(volume, target_spacing)
        self.size = network.crop_size
        self.cache_size = cache_size
        self._embeddings: OrderedDict[Voxel, torch.Tensor] = OrderedDict()
        self._logits: OrderedDict[tuple[Voxel, tuple[tuple[Voxel, bool], ...]], torch.Tensor] = OrderedDict()

    def crop(self, clicks: Sequence[Click]) -> tuple[Voxel, list[tuple[Voxel, bool]]]:
        """(crop start in canonical voxels, the clicks inside it in crop voxels, in order)."""
        canonical = [(click_to_canonical(self.grid, point), bool(positive)) for point, positive in clicks]
        start = crop_for_clicks(canonical, self.size)
        inside = [(tuple(p - s for p, s in zip(point, start, strict=True)), positive)
                  for point, positive in canonical if inside_crop(point, start, self.size)]
        if not inside:
            raise SamMed3DInputError(f"the object clicks span more than the model's {self.size}-voxel crop; "
                                     "segment the object in parts")
        return start, inside  # type: ignore[return-value]

    @torch.no_grad()
    def embedding(self, start: Voxel) -> torch.Tensor:
        """The image embedding of the crop at ``start`` (computed once while it stays cached)."""
        if start in self._embeddings:
            self._embeddings.move_to_end(start)
            return self._embeddings[start]
        crop = normalize_crop(extract_crop(self.array, self.grid, start, self.size)).to(self.device)
        embedding = self.network.encode(crop)
        self._embeddings[start] = embedding
        while len(self._embeddings) > self.cache_size:
            self._embeddings.popitem(last=False)
        return embedding

    @torch.no_grad()
    def logits(self, start: Voxel, crop_clicks: Sequence[tuple[Voxel, bool]]) -> torch.Tensor:
        """Low-resolution logits after ``crop_clicks``, from the longest prefix already computed."""
        sequence = tuple((tuple(int(v) for v in p), bool(positive)) for p, positive in crop_clicks)
        done = next((n for n in range(len(sequence), 0, -1) if (start, sequence[:n]) in self._logits), 0)
        previous = self._logits[(start, sequence[:done])] if done else None
        if done < len(sequence):
            embedding = self.embedding(start)

            def decode(points: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
                return self.network.decode(embedding, points, labels, mask)

        for n in range(done + 1, len(sequence) + 1):
            previous = decode_step(decode, sequence[:n], previous, self.network.low_res_size, self.device)
            self._logits[(start, sequence[:n])] = previous
        self._logits.move_to_end((start, sequence))
        while len(self._logits) > 16 * self.cache_size:
            self._logits.popitem(last=False)
        return previous  # type: ignore[return-value]

    def predict(self, clicks: Sequence[Click], max_voxels: int) -> tuple[Voxel, np.ndarray]:
        """(origin (k, j, i), uint8 mask over the crop's footprint on the image) after ``clicks``.

        Refuses (``SamMed3DInputError``) before any work when the footprint holds more than
        ``max_voxels`` image voxels (a very fine image: 192 mm at 0.3 mm is 640^3 voxels).
        """
        start, inside = self.crop(clicks)
        voxels = footprint_voxels(self.grid, start, self.size)
        if voxels > max_voxels:
            raise SamMed3DInputError(
                f"the model's {self.size}^3 crop at {self.grid.target:g} mm covers {voxels:,} voxels of this image, "
                f"more than the {max_voxels:,} a click may write; resample the image to a coarser spacing first")
        mask = crop_mask(self.logits(start, inside), self.size)
        return paste(mask, self.grid, start)
