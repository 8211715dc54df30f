"""Preprocessing from the card and its exact inverse: orientation, normalisation, resampling, crop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tsfm_backend.model_card import ModelCard, ModelCardError
from tsfm_backend.preprocessing import (
    body_bounding_box,
    labels_to_source,
    linear_source_weights,
    nearest_source_indices,
    network_shape_for,
    normalize,
    orientation,
    prepare,
    reorient,
    resample_linear,
    source_to_input,
    undo_reorient,
)
from tsfm_backend.volume import Volume

RAS_LPS = np.array([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def card(**overrides) -> ModelCard:
    values = dict(id="c", family="stunet", architecture={}, classes={1: "x"}, patch_size=(8, 8, 8))
    values.update(overrides)
    return ModelCard(**values)


DIRECTIONS = {
    "identity": np.eye(3),
    "lps_flipped": np.diag([-1.0, -1.0, 1.0]),
    "permuted": np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]),
    "oblique": rotation(2, 25) @ rotation(0, -15),
    "oblique_flipped_permuted": rotation(1, 20) @ np.array([[0, -1.0, 0], [0, 0, 1.0], [-1.0, 0, 0]]),
}


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_ras_orientation_points_each_network_axis_to_r_a_s(name):
    direction = DIRECTIONS[name]
    volume = Volume(np.zeros((3, 4, 5)), direction=tuple(direction.ravel()))
    permutation, flips = orientation(volume, "ras")
    assert sorted(permutation) == [0, 1, 2]
    for network_axis in range(3):
        array_axis = permutation[network_axis]
        world = direction[:, 2 - array_axis] * (-1 if flips[network_axis] else 1)
        along = RAS_LPS[network_axis] @ world
        assert along > 0.5, f"network axis {network_axis} does not point to {'RAS'[network_axis]}"


def test_kji_orientation_keeps_the_array():
    volume = Volume(np.zeros((3, 4, 5)), direction=tuple(DIRECTIONS["oblique"].ravel()))
    assert orientation(volume, "kji") == ((0, 1, 2), (False, False, False))


@pytest.mark.parametrize(
    "permutation,flips", list(itertools.product(itertools.permutations(range(3)), [(0, 1, 0), (1, 1, 1)]))
)
def test_reorient_round_trip_is_exact(permutation, flips):
    array = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    moved = reorient(array, permutation, tuple(bool(f) for f in flips))
    assert moved.shape == tuple(array.shape[p] for p in permutation)
    np.testing.assert_array_equal(undo_reorient(moved, permutation, tuple(bool(f) for f in flips)), array)


def test_normalisation_schemes():
    image = torch.tensor([-1000.0, -100.0, 0.0, 100.0, 2000.0])
    z = normalize(image, {"scheme": "zscore"})
    assert float(z.mean()) == pytest.approx(0, abs=1e-6) and float(z.std(correction=0)) == pytest.approx(
        1, rel=1e-5
    )
    window = normalize(image, {"scheme": "hu_window", "lower": -175, "upper": 250})
    torch.testing.assert_close(window, torch.tensor([0.0, 75 / 425, 175 / 425, 275 / 425, 1.0]))
    ct = normalize(image, {"scheme": "ct_clip_zscore", "lower": -500, "upper": 500, "mean": 50, "std": 100})
    torch.testing.assert_close(ct, torch.tensor([-5.5, -1.5, -0.5, 0.5, 4.5]))
    torch.testing.assert_close(normalize(image, {"scheme": "none"}), image)
    constant = normalize(torch.full((10,), 7.0), {"scheme": "zscore"})
    assert torch.all(constant == 0), "a constant image normalises to zero, not NaN"


def test_normalisation_errors_name_the_missing_field():
    with pytest.raises(ValueError, match="'lower' and 'upper'"):
        normalize(torch.zeros(3), {"scheme": "hu_window"})
    with pytest.raises(ValueError, match="'mean' and 'std'"):
        normalize(torch.zeros(3), {"scheme": "ct_clip_zscore", "lower": 0, "upper": 1})
    with pytest.raises(ValueError, match="window is empty"):
        normalize(torch.zeros(3), {"scheme": "hu_window", "lower": 5, "upper": 5})


def test_resampling_shapes_and_voxel_centres():
    assert network_shape_for((100, 200, 50), (3.0, 0.8, 1.5), (1.5, 1.5, 1.5)) == (200, 107, 50)
    assert network_shape_for((10, 20, 30), (1, 1, 1), None) == (10, 20, 30)
    # The inverse interpolation weights follow the same voxel-centre convention as torch's resize.
    source = torch.arange(7, dtype=torch.float32)[None, :, None, None].expand(1, 7, 2, 2)
    up = resample_linear(source, (16, 2, 2))[0, :, 0, 0].numpy()
    lower, upper, weight = linear_source_weights(16, 7)
    np.testing.assert_allclose(up, lower * (1 - weight) + upper * weight, atol=1e-5)
    assert list(nearest_source_indices(4, 8)) == [1, 3, 5, 7]
    assert list(nearest_source_indices(8, 4)) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_body_bounding_box_of_real_ct(shared_data):
    from tsfm_backend.image_io import read_volume

    ct = read_volume(shared_data / "totalseg" / "example_ct.nii.gz").array
    # The scan's body touches its field of view; surround it with 20 voxels of air.
    array = np.pad(ct, 20, constant_values=-1024)
    box = body_bounding_box(array, (3.0, 3.0, 3.0), margin_mm=9.0)
    inside = array[tuple(slice(a, b) for a, b in box)]
    assert (inside > -500).sum() == (array > -500).sum(), "every body voxel stays inside the box"
    assert box == ((17, 17 + 112 + 6), (17, 17 + 97 + 6), (17, 17 + 122 + 6)), (
        "body extent plus a 3-voxel margin"
    )


@pytest.mark.parametrize("axis_order", ["kji", "ras"])
@pytest.mark.parametrize("crop", [False, True])
def test_prepare_and_inverse_are_exact_at_equal_spacing(axis_order, crop):
    rng = np.random.default_rng(3)
    array = np.full((12, 14, 16), -1000, dtype=np.int16)
    array[2:10, 3:12, 4:13] = rng.integers(-200, 300, size=(8, 9, 9))
    direction = DIRECTIONS["oblique_flipped_permuted"]
    volume = Volume(array, (1.0, 1.0, 1.0), (5.0, 6.0, 7.0), tuple(direction.ravel()))
    prepared = prepare(
        volume, card(axis_order=axis_order, normalization={"scheme": "none"}), crop_to_body=crop
    )
    grid = prepared.grid
    assert grid.network_shape == grid.source_shape
    labels = (prepared.image[0] > 0).numpy().astype(np.uint8)
    back = source_to_input(labels_to_source(labels, grid), grid)
    assert back.shape == volume.shape
    np.testing.assert_array_equal(back, (array > 0).astype(np.uint8))


def test_prepare_resamples_to_the_card_spacing():
    volume = Volume(np.zeros((10, 20, 30), np.float32), spacing=(1.0, 2.0, 3.0))
    prepared = prepare(volume, card(spacing=(1.5, 1.5, 1.5)))
    assert prepared.grid.network_shape == (20, 27, 20)
    assert prepared.image.shape == (1, 20, 27, 20) and prepared.image.dtype == torch.float32
    np.testing.assert_allclose(prepared.grid.network_spacing, (1.5, 40 / 27, 1.5))


def test_multichannel_card_is_refused():
    volume = Volume(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="3 input channels"):
        prepare(volume, card(in_channels=3))


def _synthetic_ct() -> Volume:
    """A 10 x 24 x 24 CT at 0.8 x 0.8 x 3 mm (I, J, K): air, fat, soft tissue and bone edges, so that
    values outside [-175, 250] HU lie next to values inside it along every axis."""
    k, j, i = np.meshgrid(np.arange(10), np.arange(24), np.arange(24), indexing="ij")
    array = np.full((10, 24, 24), -1000.0, dtype=np.float32)
    body = ((j - 12) / 10.0) ** 2 + ((i - 12) / 11.0) ** 2 < 1
    array[body] = -100.0
    array[body & (((j - 12) / 7.0) ** 2 + ((i - 11) / 8.0) ** 2 < 1)] = 45.0
    array[body & (np.abs(j - 15) + np.abs(i - 12) < 3)] = 900.0
    array[(k % 4 == 0) & body & (i > 16)] = 1400.0
    return Volume(array.astype(np.int16), spacing=(0.8, 0.8, 3.0))


def test_a_suprem_card_resamples_before_clipping_as_the_authors_do(tmp_path):
    """SuPreM's inference: Spacingd to 1.5 mm, then ScaleIntensityRanged(-175, 250, clip=True), and a sliding
    window with MONAI overlap 0.75; the importer's card says both, and ``prepare`` follows it."""
    from support.official_checkpoints import write_suprem_checkpoint
    from tsfm_backend.checkpoints import read_checkpoint
    from tsfm_backend.models import suprem

    network = suprem.build("swinunetr", 1, 2, preset="tiny-swinunetr")
    _, suprem_card, _ = read_checkpoint(write_suprem_checkpoint(tmp_path / "suprem.pth", network, universal=False))
    assert suprem_card.sliding_window_step == 0.25 and suprem_card.spacing == (1.5, 1.5, 1.5)
    assert suprem_card.normalization == {"scheme": "hu_window", "lower": -175.0, "upper": 250.0,
                                         "after_resampling": True}
    volume = _synthetic_ct()
    prepared = prepare(volume, suprem_card)
    permutation, flips = orientation(volume, "ras")
    raw = torch.from_numpy(np.ascontiguousarray(reorient(volume.array, permutation, flips), dtype=np.float32))[None]
    shape = prepared.grid.network_shape
    assert shape == (13, 13, 20)  # R, A, S: the I, J, K axes at 1.5 mm
    resampled_then_clipped = (resample_linear(raw, shape).clamp(-175, 250) + 175) / 425
    clipped_then_resampled = resample_linear((raw.clamp(-175, 250) + 175) / 425, shape)
    torch.testing.assert_close(prepared.image, resampled_then_clipped, rtol=0, atol=1e-6)
    assert (clipped_then_resampled - resampled_then_clipped).abs().max() > 0.1, "the order matters on this CT"
    # Cards that do not say so keep normalising first (nnU-Net's order).
    plain = card(spacing=(1.5, 1.5, 1.5), axis_order="ras",
                 normalization={"scheme": "hu_window", "lower": -175.0, "upper": 250.0})
    torch.testing.assert_close(prepare(volume, plain).image, clipped_then_resampled, rtol=0, atol=1e-6)


def test_normalisation_order_and_window_step_are_checked_in_cards():
    assert card().sliding_window_step == 0.5 and "after_resampling" not in card().normalization
    with pytest.raises(ModelCardError, match="after_resampling must be true or false"):
        card(normalization={"scheme": "none", "after_resampling": "yes"})
    for bad in (0, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ModelCardError, match="sliding_window_step must be a number in"):
            card(sliding_window_step=bad)
