"""VISTA3D's clicks as the MONAI bundle runs them: one window per click, the sum of the windows, the
components that hold a positive click.

The bundle's ``Vista3dInferer`` with ``use_point_window`` (``configs/inference.json``) calls MONAI's
``monai.apps.vista3d.inferer.point_based_window_inferer`` on the preprocessed image (1.5 mm, RAS, the HU
window scaled to [0, 1]) with every click of the object and no class (``prompt_class`` None):

1. the image is padded with zeros to at least the patch along each axis, half before (``_pad_previous_mask``);
2. for each click a window of the patch size is centred on it, ``[int(p) - S // 2, int(p) + S // 2)``, moved
   inside the image where it would cross an edge (``_get_window_idx_c``, ``center_only``);
3. each window runs VISTA3D with all the clicks; MONAI's ``update_point_to_patch`` keeps those strictly
   inside the window, in window coordinates;
4. the window logits are *added* where windows overlap (the inferer divides the sum by a mask of ones),
   and voxels no window covered are not computed (NaN, which the bundle writes as 255);
5. ``VistaPostTransformd`` keeps the 26-connected components of ``logits > 0`` that hold a positive click
   (``keep_components_with_positive_points``), and the mask is brought back to the image grid by nearest
   neighbour (``Invertd(nearest_interp=True)``).

Here the voxels no window covered keep the object's previous mask, as the inferer does when it is given
one (``prev_mask``). Two steps of the bundle are not taken: its ``CropForegroundd`` (the image cropped to
voxels above 0 HU plus 10 voxels) before the windows, and MONAI's affine mapping of clicks; a click maps
to the network grid by the voxel-centre convention of our resampling (``preprocessing``).

Arrays on the network grid are (X, Y, Z) in RAS order; image arrays (K, J, I).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from tsfm_backend.inference.sliding_window import pad_to_patch
from tsfm_backend.model_card import ModelCard
from tsfm_backend.preprocessing import GridMap, labels_to_source, prepare, source_to_input
from tsfm_backend.volume import Volume

Voxel = tuple[int, int, int]
# Codes of the combined network-grid map that goes back to the image grid in one nearest-neighbour pass.
NOT_COMPUTED, BACKGROUND, OBJECT = 0, 1, 2
# 26-connectivity, as ``keep_components_with_positive_points`` labels (skimage ``connectivity=3``).
NEIGHBOURS_26 = np.ones((3, 3, 3), dtype=bool)
# Clicks one object may hold: every click adds a window that each later click runs again, so this bounds
# a click's cost to this many patches.
MAX_CLICKS = 32


class TooManyClicks(ValueError):
    """An object that already holds ``MAX_CLICKS`` clicks."""


def window_start(point: float, patch: int, size: int) -> int:
    """First voxel of the click window along one axis of ``size`` voxels (``_get_window_idx_c``)."""
    if point - patch // 2 < 0:
        return 0
    if point + patch // 2 > size:
        return size - patch
    return int(point) - patch // 2


def image_to_network(points: Sequence[Voxel], grid: GridMap) -> np.ndarray:
    """(N, 3) float network-grid coordinates (RAS axes) of image voxels (k, j, i), by the voxel-centre
    convention the resampling uses: ``network = (source + 0.5) * network_size / source_size - 0.5``."""
    result = np.zeros((len(points), 3), dtype=np.float64)
    for row, point in enumerate(points):
        for axis, (source_axis, flipped) in enumerate(zip(grid.permutation, grid.flips, strict=True)):
            start, stop = grid.crop[source_axis]
            source = int(point[source_axis]) - start
            if flipped:
                source = stop - start - 1 - source
            scale = grid.network_shape[axis] / grid.source_shape[axis]
            result[row, axis] = (source + 0.5) * scale - 0.5
    return result


def keep_clicked_components(positive: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    """The 26-connected components of bool ``positive`` that hold one of ``clicks`` ((N, 3), rounded)."""
    components, _ = ndimage.label(positive, structure=NEIGHBOURS_26)
    kept = {int(components[tuple(int(round(c)) for c in click)]) for click in clicks
            if all(0 <= round(c) < n for c, n in zip(click, positive.shape, strict=True))}
    kept.discard(0)
    return np.isin(components, sorted(kept)) if kept else np.zeros_like(positive)


def summed_window_logits(network: torch.nn.Module, image: torch.Tensor, clicks: np.ndarray, labels: Sequence[int],
                         patch: Sequence[int], amp_dtype: torch.dtype | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Steps 2 to 4 of the module docstring on a (1, 1, X, Y, Z) image at least ``patch`` large.

    ``clicks`` (N, 3) are float network-grid coordinates, ``labels`` 1 or 0 each. Returns the window logits
    summed over the bounding box of the windows (float32), where a window covered that box (bool), and the
    box's first voxel (3,).
    """
    # Float64, as the bundle's clicks after its affine mapping: a window's start truncates the coordinate.
    coords = torch.as_tensor(clicks, dtype=torch.float64, device=image.device)[None]
    point_labels = torch.as_tensor(list(labels), device=image.device)[None]
    size = tuple(image.shape[2:])
    windows = Counter(tuple(window_start(float(c), p, n) for c, p, n in zip(click, patch, size, strict=True))
                      for click in clicks)
    low = np.min(list(windows), axis=0)
    high = np.max(list(windows), axis=0) + np.asarray(patch)
    total = torch.zeros(tuple(int(h - lo) for lo, h in zip(low, high, strict=True)), device=image.device)
    covered = torch.zeros_like(total, dtype=torch.bool)
    with torch.inference_mode(), torch.autocast(image.device.type, dtype=amp_dtype or torch.float32,
                                                enabled=amp_dtype is not None):
        for start, count in windows.items():
            window = (slice(None), slice(None), *(slice(s, s + p) for s, p in zip(start, patch, strict=True)))
            logits = network(image[window], point_coords=coords, point_labels=point_labels, patch_coords=[window],
                             transpose=True)
            inside = tuple(slice(s - lo, s - lo + p) for s, lo, p in zip(start, low, patch, strict=True))
            # A window asked for by several clicks counts that many times, as in the bundle's inferer.
            total[inside] += count * logits[0, 0].float()
            covered[inside] = True
    return total, covered, low


class Vista3DClicks:
    """The bundle's click procedure for one image (see the module docstring).

    Args:
        network: a ``models.vista3d.Vista3DNetwork``.
        volume: the session image, HU.
        card: the model card (spacing, RAS, normalisation, patch).
        device: where the network runs.
        amp_dtype: autocast dtype, or None for float32.
    """

    def __init__(self, network: torch.nn.Module, volume: Volume, card: ModelCard, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> None:
        self.network, self.volume, self.card = network, volume, card
        self.device, self.amp_dtype = device, amp_dtype
        self.patch = tuple(int(p) for p in card.patch_size)
        self._prepared: tuple[torch.Tensor, tuple[int, int, int], GridMap] | None = None

    def _image(self) -> tuple[torch.Tensor, tuple[int, int, int], GridMap]:
        """(1, 1, X, Y, Z) padded network image, the padding before each axis, and the grid map; made once."""
        if self._prepared is None:
            with torch.inference_mode():
                prepared = prepare(self.volume, self.card, self.device, with_body=False)
                image, before = pad_to_patch(prepared.image, self.patch)
            self._prepared = (image[None], before, prepared.grid)
        return self._prepared

    def predict(self, previous: np.ndarray, positive: Sequence[Voxel], negative: Sequence[Voxel]) -> np.ndarray:
        """(K, J, I) uint8 mask of the object after its clicks; voxels no window covers keep ``previous``.

        Raises ``TooManyClicks`` past ``MAX_CLICKS`` clicks, before anything runs.
        """
        if len(positive) + len(negative) > MAX_CLICKS:
            raise TooManyClicks(
                f"this object holds {MAX_CLICKS} clicks, the most a VISTA3D object takes (each click runs a "
                "window again for every later click); undo, reset the object, or edit its mask directly")
        image, before, grid = self._image()
        clicks = image_to_network(list(positive) + list(negative), grid) + np.asarray(before)
        labels = [1] * len(positive) + [0] * len(negative)
        total, covered, low = summed_window_logits(self.network, image, clicks, labels, self.patch, self.amp_dtype)
        return self._to_image(previous, total.cpu().numpy(), covered.cpu().numpy(), low, before, grid,
                              clicks[: len(positive)])

    def _to_image(self, previous: np.ndarray, total: np.ndarray, covered: np.ndarray, low: np.ndarray,
                  before: tuple[int, int, int], grid: GridMap, positive_clicks: np.ndarray) -> np.ndarray:
        """Unpad, keep the clicked components, and write the computed part onto ``previous``."""
        codes = np.zeros(grid.network_shape, dtype=np.uint8)
        # The summed box on the padded grid, cut to the unpadded network grid.
        box_padded = [(int(lo), int(lo) + n) for lo, n in zip(low, total.shape, strict=True)]
        target = tuple(slice(max(a - b, 0), min(c - b, n)) for (a, c), b, n in
                       zip(box_padded, before, grid.network_shape, strict=True))
        source = tuple(slice(t.start + b - a, t.stop + b - a) for t, b, (a, _) in
                       zip(target, before, box_padded, strict=True))
        positive = np.zeros(grid.network_shape, dtype=bool)
        positive[target] = (total[source] > 0) & covered[source]
        kept = keep_clicked_components(positive, positive_clicks - np.asarray(before))
        codes[target] = np.where(covered[source], BACKGROUND, NOT_COMPUTED)
        codes[kept] = OBJECT
        back = source_to_input(labels_to_source(codes, grid), grid)
        return np.where(back == NOT_COMPUTED, previous, back == OBJECT).astype(np.uint8)
