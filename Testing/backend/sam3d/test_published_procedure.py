"""The published 3DSAM-adapter procedure step by step, and which procedure a session runs.

Each step is checked against an independent computation of what the authors' ``test.py`` and data loader
do (plain numpy formulas, not the functions under test); ``test_published_reference.py`` compares with
the authors' code itself.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference import sam3d_published as published
from tsfm_backend.inference.interactive import Interaction, InteractiveSession
from tsfm_backend.inference.sam3d_predictor import Sam3DPredictor
from tsfm_backend.model_card import ModelCard, ModelCardError
from tsfm_backend.models.sam3d import PRESETS, sam3d_card
from tsfm_backend.volume import Volume


def linear_weights(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's linear resize with a given scale factor, align_corners False:
    source = (d + 0.5) / scale - 0.5, clamped at 0, neighbours clamped at the last index."""
    weights = np.zeros((n_out, n_in))
    for d in range(n_out):
        source = max((d + 0.5) / scale - 0.5, 0.0)
        low = min(int(math.floor(source)), n_in - 1)
        high = min(low + 1, n_in - 1)
        frac = source - low if low < n_in - 1 else 0.0
        weights[d, low] += 1 - frac
        weights[d, high] += frac
    return weights


def separable_resample(array: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    out = array.astype(np.float64)
    for axis, (n, s) in enumerate(zip(array.shape, spacing, strict=True)):
        scale = float(np.float32(s))
        w = linear_weights(n, math.floor(n * scale), scale)
        out = np.moveaxis(np.tensordot(w, np.moveaxis(out, axis, 0), axes=1), 0, axis)
    return out


@pytest.mark.parametrize("spacing", [(0.9963, 1.7, 2.5), (9.0, 1.5, 1.2)])  # the second: slice-wise path
def test_resampling_is_a_floor_sized_trilinear_resize_by_the_spacing(spacing):
    rng = np.random.default_rng(0)
    array = rng.normal(0, 100, (7, 9, 6)).astype(np.float32)
    resampled = published.resample(array, spacing).numpy()
    expected_shape = tuple(math.floor(n * float(np.float32(s))) for n, s in zip(array.shape, spacing, strict=True))
    assert resampled.shape == expected_shape
    if spacing[0] == 0.9963:
        assert resampled.shape[0] == 6  # floor(6.974), not round
    np.testing.assert_allclose(resampled, separable_resample(array, spacing), atol=1e-3)


def test_nan_becomes_zero_before_resampling():
    array = np.full((4, 4, 4), 50.0, dtype=np.float32)
    array[1, 1, 1] = np.nan
    assert np.isfinite(published.resample(array, (1.0, 1.0, 1.0)).numpy()).all()


def test_clip_then_zscore_on_the_resampled_grid():
    values = torch.tensor([-1000.0, -57.0, 0.0, 100.0, 175.0, 3000.0])
    out = published.clip_and_zscore(values, -57.0, 175.0, 65.175035, 32.651197).numpy()
    np.testing.assert_allclose(out, (np.clip(values.numpy(), -57, 175) - 65.175035) / 32.651197, rtol=1e-6)


def test_clicks_map_to_the_middle_of_their_nearest_resized_voxels():
    # spacing 2 mm -> voxel p becomes resampled 2p and 2p + 1; the middle (lower) one is taken
    assert published.click_to_resampled((3, 0, 5), (10, 10, 10), (20, 10, 20)) == (6, 0, 10)
    # 3 mm: 3p, 3p + 1, 3p + 2 -> 3p + 1
    assert published.click_to_resampled((4, 4, 4), (10, 10, 10), (30, 30, 30)) == (13, 13, 13)


def test_crop_is_centred_on_the_clicks_midpoint_floor_divided():
    box = published.place_crop([(3, 10, 0), (8, 13, 5)], 32)
    assert box.start == ((3 + 8) // 2 - 16, (10 + 13) // 2 - 16, (0 + 5) // 2 - 16)
    assert published.place_crop([(40, 50, 60)], 32).start == (24, 34, 44)
    points = published.crop_points([(3, 10, 0), (8, 13, 5)], box)
    np.testing.assert_array_equal(points.numpy(), np.array([(3, 10, 0), (8, 13, 5)]) - np.array(box.start))
    with pytest.raises(ValueError, match="even"):
        published.place_crop([(1, 1, 1)], 31)


def test_outside_the_volume_the_crop_is_zero_and_inside_it_is_the_image():
    image = torch.arange(10 * 12 * 14, dtype=torch.float32).reshape(10, 12, 14) + 1.0
    box = published.CropBox((-5, 4, 6), 16)
    crop = published.extract_crop(image, box, 3)
    assert tuple(crop.shape) == (1, 3, 16, 16, 16)
    assert torch.equal(crop[0, 0], crop[0, 2])
    expected = np.zeros((16, 16, 16), dtype=np.float32)
    expected[5:15, 0:8, 0:8] = image.numpy()[0:10, 4:12, 6:14]
    np.testing.assert_array_equal(crop[0, 0].numpy(), expected)


def test_paste_puts_the_inside_part_of_the_crop_into_zeros():
    probability = torch.rand(16, 16, 16)
    box = published.CropBox((-5, 4, 6), 16)
    full = published.paste(probability, box, (10, 12, 14)).numpy()
    expected = np.zeros((10, 12, 14), dtype=np.float32)
    expected[0:10, 4:12, 6:14] = probability.numpy()[5:15, 0:8, 0:8]
    np.testing.assert_array_equal(full, expected)


def test_whole_procedure_on_a_small_volume_returns_the_image_grid_mask():
    rng = np.random.default_rng(1)
    array = rng.normal(60, 40, (10, 24, 20)).astype(np.float32)
    seen = []

    def network(crop, points):
        seen.append((tuple(crop.shape), points.clone()))
        return torch.ones(crop.shape[2:])

    card = sam3d_card(PRESETS["tiny"], "kits", "t")
    mask = published.segment(array, (2.0, 0.8, 0.8), [(5, 12, 10)], card.normalization, network, 32)
    assert mask.shape == array.shape and mask.dtype == np.uint8
    assert seen[0][0] == (1, 3, 32, 32, 32)
    assert seen[0][1].tolist() == [[16, 16, 16]]
    assert mask.all()  # probability 1 over a 32 mm cube that covers this 20 x 19 x 16 mm volume


# ------------------------------------------------------------------------------ which path a session runs
@pytest.fixture
def synthetic_ct() -> Volume:
    rng = np.random.default_rng(2)
    array = rng.normal(60, 60, (12, 40, 36)).astype(np.float32)
    return Volume(array, spacing=(0.8, 0.8, 2.0))  # (I, J, K) mm


def test_session_runs_the_published_procedure_by_default(tiny_network, synthetic_ct):
    card = sam3d_card(PRESETS["tiny"], "kits", "sam3d-tiny")
    assert card.procedure == "published"
    session = InteractiveSession(LoadedModel(tiny_network, card), synthetic_ct)
    assert session.procedure == "published"
    session.interact(Interaction("point", point=(6, 20, 18)))
    predictor = Sam3DPredictor(tiny_network)
    expected = published.segment(synthetic_ct.array, synthetic_ct.spacing_kji, [(6, 20, 18)], card.normalization,
                                 lambda c, p: predictor.predict(c, p, outside_ok=True), 32)
    np.testing.assert_array_equal(session.mask(1), expected)
    # no procedure on the card (older cards): published too
    unnamed = InteractiveSession(LoadedModel(tiny_network, replace(card, procedure=None)), synthetic_ct)
    assert unnamed.procedure == "published"


def test_session_runs_the_cached_cube_when_the_card_or_caller_says_so(tiny_network, synthetic_ct, monkeypatch):
    card = replace(sam3d_card(PRESETS["tiny"], "kits", "sam3d-tiny"), procedure="cached")
    session = InteractiveSession(LoadedModel(tiny_network, card), synthetic_ct)
    assert session.procedure == "cached"
    calls = []
    monkeypatch.setattr(published, "predict", lambda *a, **k: calls.append(1))
    session.interact(Interaction("point", point=(6, 20, 18)))
    assert not calls
    assert session.objects[1].roi.size == (16, 40, 40)  # the 32 mm cube at 2 / 0.8 / 0.8 mm
    chosen = InteractiveSession(LoadedModel(tiny_network, replace(card, procedure="published")), synthetic_ct,
                                procedure="cached")
    assert chosen.procedure == "cached"


def test_card_procedure_is_validated_and_round_trips():
    card = sam3d_card(PRESETS["tiny"], "kits", "sam3d-tiny")
    assert ModelCard.from_json(card.to_json()).procedure == "published"
    with pytest.raises(ModelCardError, match="procedure"):
        replace(card, procedure="fast")


def test_published_on_real_ct_matches_the_pure_function(tiny_network, shared_data):
    case = shared_data / "sts" / "STS_001"
    volume = read_volume(case / "ct.nii.gz")
    mask = read_volume(case / "mask.nii.gz").array > 0
    centre = tuple(int(c) for c in np.round(np.argwhere(mask).mean(0)))
    card = sam3d_card(PRESETS["tiny"], "kits", "sam3d-tiny")
    calls = []
    tiny_network.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    session = InteractiveSession(LoadedModel(tiny_network, card), volume)
    session.interact(Interaction("point", point=centre))
    session.interact(Interaction("point", point=centre))  # same midpoint, same crop: embedding reused
    assert len(calls) == 1
    prepared = published.prepare(volume.array, volume.spacing_kji, card.normalization)
    assert prepared.grid == tuple(math.floor(n * float(np.float32(s)))
                                  for n, s in zip(volume.array.shape, volume.spacing_kji, strict=True))
    predictor = Sam3DPredictor(tiny_network)
    expected = published.predict(prepared, [centre, centre], lambda c, p: predictor.predict(c, p), 32)
    np.testing.assert_array_equal(session.mask(1), expected)
