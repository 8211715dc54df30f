"""One click of the published 3DSAM-adapter procedure costs memory of the crop, not of the volume.

``crop_on_image`` computes only the CT voxels the pasted crop reaches; it must give what the authors'
whole-grid steps (``paste`` then ``back_to_image``: a float map of the resampled grid, another of the CT
grid) give there, bit for bit, and zeros elsewhere.
"""

from __future__ import annotations

import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from tsfm_backend.inference import sam3d_published as published
from tsfm_backend.models.sam3d.official import DATASETS

REFERENCE = Path(__file__).resolve().parents[1] / "reference_outputs" / "sam3d_published_reference.npz"
CROP = 128


class TorchAllocations(TorchDispatchMode):
    """Bytes of tensor storage that the operators run inside the block allocate: ``peak`` live at once.

    Each new storage counts from the operator that made it until it is freed (views share their base's)."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak = 0, 0
        self._tracked: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self._tracked.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in self._tracked:
                    self._tracked.add(key)
                    self.live += size
                    weakref.finalize(storage, self._release, key, size)
        self.peak = max(self.peak, self.live)
        return result


def peak_bytes(run) -> tuple[int, object]:
    """(peak torch storage + peak numpy/Python allocation, result) of ``run()``: an upper bound of its peak."""
    tracemalloc.start()
    try:
        with TorchAllocations() as torch_bytes:
            result = run()
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return torch_bytes.peak + python_peak, result


def stand_in(crop: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """A network whose object probability follows the crop's intensity: (S, S, S) float32."""
    return torch.sigmoid(crop[0, 0])


def flat_volume(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> published.PreparedVolume:
    """A prepared CT of ``shape`` voxels that takes no memory: one value seen everywhere."""
    grid = published.resampled_shape(shape, spacing)
    return published.PreparedVolume(torch.full((1, 1, 1), 0.7).expand(grid), shape)


CLICK = [(150, 256, 256)]
SPACING = (1.0, 0.7, 0.7)
# The crop's footprint on the CT grid: 128 voxels along K (1 mm, as the grid), 128 / 0.7 along J and I,
# where the outermost voxels (interpolated half from outside the crop) fall below 0.5.
FOOTPRINT = (128, 184, 184)
OBJECT_VOXELS = 128 * 182 * 182
# The measured peak is 12 bytes per footprint voxel: the 3-channel crop, the float32 footprint and a few
# slices of float64 temporaries. A float map of the resampled grid alone would be 4 bytes per grid voxel.
BYTES_PER_FOOTPRINT_VOXEL = 16


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """One measured click before the real ones, so that lazy imports and first-call caches are not counted."""
    with TorchAllocations():
        published.predict_footprint(flat_volume((200, 200, 200), SPACING), [(100, 100, 100)], stand_in, CROP)


@pytest.mark.parametrize("shape", [(300, 512, 512), (600, 512, 512)])
def test_one_click_allocates_in_proportion_to_the_crop_not_the_volume(shape):
    prepared = flat_volume(shape, SPACING)
    used, footprint = peak_bytes(lambda: published.predict_footprint(prepared, CLICK, stand_in, CROP))
    assert footprint.values.shape == FOOTPRINT and footprint.values.sum() == OBJECT_VOXELS
    assert used < BYTES_PER_FOOTPRINT_VOXEL * np.prod(FOOTPRINT)
    assert used < 4 * np.prod(shape) / 5


def test_the_peak_does_not_grow_with_the_volume():
    peaks = []
    for shape in ((300, 512, 512), (900, 1024, 1024)):
        prepared = flat_volume(shape, SPACING)
        with TorchAllocations() as torch_bytes:
            published.predict_footprint(prepared, CLICK, stand_in, CROP)
        peaks.append(torch_bytes.peak)
    assert abs(peaks[1] - peaks[0]) < 64 << 10  # only the per-axis weight tables grow, a few bytes per voxel row


def test_the_whole_image_mask_is_the_only_volume_sized_array():
    shape = (300, 512, 512)
    prepared = flat_volume(shape, SPACING)
    used, mask = peak_bytes(lambda: published.predict(prepared, CLICK, stand_in, CROP))
    assert mask.shape == shape and mask.dtype == np.uint8 and mask.sum() == OBJECT_VOXELS
    assert used < mask.nbytes + BYTES_PER_FOOTPRINT_VOXEL * np.prod(FOOTPRINT)


@pytest.mark.parametrize("seed", range(40))
def test_the_footprint_holds_what_the_whole_grid_steps_give(seed):
    rng = np.random.default_rng(seed)
    grid = tuple(int(n) for n in rng.integers(5, 40, 3))
    shape = tuple(int(n) for n in rng.integers(5, 60, 3))
    size = int(rng.choice([4, 8, 16]))
    box = published.CropBox(tuple(int(rng.integers(-size, n)) for n in grid), size)
    probability = torch.from_numpy(rng.random((size,) * 3, dtype=np.float32))
    whole = published.back_to_image(published.paste(probability, box, grid), shape).numpy()
    footprint = published.crop_on_image(probability, box, grid, shape)
    np.testing.assert_array_equal(footprint.into(shape), whole)


def test_a_crop_wholly_outside_the_grid_reaches_nothing():
    footprint = published.crop_on_image(torch.ones(4, 4, 4), published.CropBox((20, 0, 0), 4), (10, 10, 10),
                                        (20, 20, 20))
    assert footprint.values.size == 0 and not footprint.into((20, 20, 20)).any()


@pytest.mark.parametrize("case", ["single", "three", "aniso"])
def test_the_stored_reference_still_matches(case):
    """The authors' ``test.py`` outputs (``make_sam3d_published_reference.py``), from the bounded steps."""
    with np.load(REFERENCE) as data:
        reference = {key: data[key] for key in data.files if key.startswith(case)}
    colon = DATASETS["colon"]
    normalization = {"scheme": "ct_clip_zscore", **{k: colon[k] for k in ("lower", "upper", "mean", "std")}}
    prepared = published.prepare(reference[f"{case}_image"], reference[f"{case}_spacing"], normalization)
    clicks = [tuple(int(v) for v in c) for c in reference[f"{case}_clicks"]]  # resampled-grid, as test.py drew
    box = published.place_crop(clicks, 32)
    crop = published.extract_crop(prepared.image, box, 3)[0, 0]
    probability = torch.softmax(torch.stack([torch.zeros_like(crop), crop]), dim=0)[1]  # the generator's network
    footprint = published.crop_on_image(probability, box, prepared.grid, prepared.shape)
    np.testing.assert_array_equal(footprint.into(prepared.shape), reference[f"{case}_probability"])
    np.testing.assert_array_equal((footprint.into(prepared.shape) > 0.5).astype(np.uint8), reference[f"{case}_mask"])
