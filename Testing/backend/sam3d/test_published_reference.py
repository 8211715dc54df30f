"""``sam3d_published`` against the authors' own ``test.py`` and data loader, run on small synthetic CTs.

The outputs come from ``Testing/backend/reference_outputs/make_sam3d_published_reference.py`` (MONAI 1.1,
nibabel, torch, the authors' unchanged code; the network replaced by one whose object logit is the
crop's normalised intensity). Each case checks every step: resampled and normalised volume, click
mapping, crop placement and contents, clicks in crop voxels, pasted and resized probability, mask.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from tsfm_backend.inference import sam3d_published as published
from tsfm_backend.models.sam3d.official import DATASETS

REFERENCE = Path(__file__).resolve().parents[1] / "reference_outputs" / "sam3d_published_reference.npz"
CASES = ("single", "three", "aniso")
CROP = 32


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


def colon() -> dict:
    stats = DATASETS["colon"]
    return {"scheme": "ct_clip_zscore", **{k: stats[k] for k in ("lower", "upper", "mean", "std")}}


def stand_in(crop: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The generator's network: logits (0, crop intensity), softmax channel 1."""
    image = crop[0, 0]
    return torch.softmax(torch.stack([torch.zeros_like(image), image])[None], dim=1)[0, 1]


@pytest.mark.parametrize("case", CASES)
def test_prepared_volume_is_the_loaders(reference, case):
    prepared = published.prepare(reference[f"{case}_image"], reference[f"{case}_spacing"], colon())
    expected = reference[f"{case}_prepared"]
    assert prepared.grid == expected.shape
    np.testing.assert_array_equal(prepared.image.numpy(), expected)  # bit for bit (same torch)


@pytest.mark.parametrize("case", CASES)
def test_clicks_crop_and_mask_are_test_py_s(reference, case):
    prepared = published.prepare(reference[f"{case}_image"], reference[f"{case}_spacing"], colon())
    clicks = [tuple(int(v) for v in c) for c in reference[f"{case}_clicks"]]  # what test.py drew
    box = published.place_crop(clicks, CROP)
    crop = published.extract_crop(prepared.image, box, 3)
    assert tuple(crop.shape) == tuple(reference[f"{case}_crop_shape"])
    assert hashlib.sha256(crop.numpy().tobytes()).hexdigest() == str(reference[f"{case}_crop_sha256"])
    points = published.crop_points(clicks, box)
    # test.py hands the prompt encoder (D, W, H); ours are (D, H, W).
    np.testing.assert_array_equal(points[:, [0, 2, 1]].numpy(), reference[f"{case}_prompt_points"])
    pasted = published.paste(stand_in(crop, points), box, prepared.grid)
    probability = published.back_to_image(pasted, prepared.shape).numpy()
    np.testing.assert_array_equal(probability, reference[f"{case}_probability"])
    np.testing.assert_array_equal(published.to_image_grid(pasted, prepared.shape), reference[f"{case}_mask"])


@pytest.mark.parametrize("case", CASES)
def test_each_label_voxel_maps_onto_a_voxel_test_py_could_draw(reference, case):
    """The clicks test.py draws are voxels of the label resized by nearest neighbour; our mapping of a label
    voxel must be one of those, for every label voxel that the resize keeps."""
    image = reference[f"{case}_image"]
    grid = published.resampled_shape(image.shape, reference[f"{case}_spacing"])
    for voxel in reference[f"{case}_label_voxels"]:
        label = torch.zeros(image.shape)
        label[tuple(voxel)] = 1
        resized = torch.nn.functional.interpolate(label[None, None], size=grid, mode="nearest")[0, 0]
        drawable = {tuple(v) for v in torch.nonzero(resized).tolist()}
        mapped = published.click_to_resampled(tuple(voxel), image.shape, grid)
        if drawable:
            assert mapped in drawable
        else:  # (1, 2, 3) in "three": no resampled voxel reads it; the nearest one that reads a neighbour
            assert all(0 <= m < n for m, n in zip(mapped, grid, strict=True))
    for click in reference[f"{case}_clicks"]:  # and the drawn clicks came from the label
        sources = [published.nearest_sources(n, m)[c] for n, m, c in zip(image.shape, grid, click, strict=True)]
        assert any(tuple(sources) == tuple(v) for v in reference[f"{case}_label_voxels"])
