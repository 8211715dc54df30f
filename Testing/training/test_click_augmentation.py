"""Augmentation of interactive training crops: transforms in millimetres, image and mask kept aligned."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tsfm_training.data.click_augmentation import (
    ClickAugmentation,
    adjust_intensity,
    random_voxel_transform,
    rotation_matrix,
    transformed_crop,
)
from tsfm_training.recipes import interactive

SPACING = (3.0, 2.0, 2.0)


def bar_along_j(shape=(21, 61, 61)) -> np.ndarray:
    """A bar 62 mm long along J, 9 mm along K and 10 mm along I, centred in the array."""
    mask = np.zeros(shape, dtype=bool)
    k, j, i = (n // 2 for n in shape)
    mask[k - 1:k + 2, j - 15:j + 16, i - 2:i + 3] = True
    return mask


def test_nothing_is_drawn_when_every_probability_is_zero():
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    image = np.linspace(0, 1, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    assert random_voxel_transform(rng, SPACING, ClickAugmentation()) is None
    assert np.array_equal(adjust_intensity(image, rng, ClickAugmentation()), image)
    assert rng.bit_generator.state == state  # runs without augmentation draw the same batches as before


def test_identity_transform_is_a_plain_crop_padded_with_the_fill():
    image = np.random.default_rng(0).normal(size=(20, 30, 30)).astype(np.float32)
    for centre in (np.array([10, 15, 15]), np.array([2, 28, 15])):  # inside; crossing two borders
        size = (8, 10, 10)
        crop = transformed_crop(image, centre, size, np.eye(3), fill=-7.0)
        expected = interactive.crop_with_padding(image, centre - np.array(size) // 2, size, fill=-7.0)
        assert np.allclose(crop, expected, atol=1e-5)


def test_rotation_turns_a_bar_in_millimetres_and_keeps_the_mask_on_the_image():
    mask = bar_along_j()
    image = mask.astype(np.float32) * 2.0 - 1.0
    millimetres = np.diag(SPACING)
    quarter_turn = np.linalg.inv(millimetres) @ rotation_matrix(0, math.pi / 2) @ millimetres
    centre = np.array(mask.shape) // 2
    turned = transformed_crop(mask, centre, mask.shape, quarter_turn, 0.0)
    turned_image = transformed_crop(image, centre, mask.shape, quarter_turn, -1.0)
    assert turned.dtype == bool
    extent = np.ptp(np.argwhere(turned), axis=0) + 1
    assert tuple(extent) == (3, 5, 31)  # the 62 mm now lie along I, the 10 mm along J
    assert int(turned.sum()) == int(mask.sum())
    assert np.array_equal(turned, turned_image > 0)  # one transform for both


def test_zoom_scales_the_volume_and_a_drawn_transform_respects_the_ranges():
    grid = np.indices((21, 61, 61)).astype(float) - np.array([10, 30, 30])[:, None, None, None]
    mask = np.sqrt(sum((g * s) ** 2 for g, s in zip(grid, SPACING, strict=True))) <= 20.0  # a 20 mm ball
    centre = np.array(mask.shape) // 2
    augmentation = ClickAugmentation(spatial_probability=1.0, rotation_deg=(0.0, 0.0, 0.0), zoom=(1.2, 1.2))
    transform = random_voxel_transform(np.random.default_rng(0), SPACING, augmentation)
    assert np.allclose(transform, np.eye(3) / 1.2)
    zoomed = transformed_crop(mask, centre, mask.shape, transform, 0.0)
    assert zoomed.sum() / mask.sum() == pytest.approx(1.2 ** 3, rel=0.05)
    rotated = random_voxel_transform(np.random.default_rng(1), SPACING,
                                     ClickAugmentation(spatial_probability=1.0, zoom=(1.0, 1.0)))
    physical = np.diag(SPACING) @ rotated @ np.linalg.inv(np.diag(SPACING))
    assert np.allclose(physical @ physical.T, np.eye(3), atol=1e-9)  # a rotation in millimetres


def test_intensity_changes_keep_the_range_and_add_noise():
    image = np.linspace(-1.0, 2.0, 4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    gamma = adjust_intensity(image, np.random.default_rng(0), ClickAugmentation(gamma_probability=1.0))
    assert gamma.min() == pytest.approx(-1.0) and gamma.max() == pytest.approx(2.0)
    assert not np.allclose(gamma, image)
    noisy = adjust_intensity(image, np.random.default_rng(0), ClickAugmentation(noise_probability=1.0, noise_std=0.1))
    assert 0.05 < float(np.std(noisy - image)) < 0.2


def test_augmented_batches_click_inside_their_transformed_target(shared_data):
    case = interactive.load_case(shared_data / "sts" / "STS_002", SPACING,
                                 {"scheme": "hu_window", "lower": -250.0, "upper": 350.0})
    simulation = interactive.SimulationConfig(correction_probability=0.0, box_probability=0.0)
    augmentation = ClickAugmentation.from_dict({"spatial_probability": 1.0, "zoom": [0.85, 1.2]})
    batches = interactive.ClickBatches([case], SPACING, 5.0, [(16, 32, 32)], [4], simulation, seed=0,
                                       augmentation=augmentation)
    batch = next(batches)
    positive, target = batch["image"][:, 1] > 0.5, batch["label"][:, 0] > 0.5
    assert target.any() and positive.any()
    assert all(bool((positive[b] & target[b]).any()) for b in range(4))  # each first click on the object
    with pytest.raises(ValueError, match="rotation"):
        ClickAugmentation.from_dict({"rotation": 10})
