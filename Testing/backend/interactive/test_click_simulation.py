"""Training's simulated prompts: reproducible, each click lands where its sign says, rounds as configured."""

from __future__ import annotations

import numpy as np
import pytest
from tsfm_training.objectives.click_simulation import (
    SimulationConfig,
    correction_clicks,
    corrupt_mask,
    error_click,
    flat_box,
    simulate_prompts,
    simulation_rounds,
)


def target() -> np.ndarray:
    grid = np.indices((24, 40, 40))
    return (((grid[0] - 12) / 8.0) ** 2 + ((grid[1] - 20) / 12.0) ** 2 + ((grid[2] - 20) / 12.0) ** 2) <= 1


def test_same_seed_same_prompts():
    a = simulate_prompts(target(), (3.0, 2.0, 2.0), np.random.default_rng(5))
    b = simulate_prompts(target(), (3.0, 2.0, 2.0), np.random.default_rng(5))
    assert np.array_equal(a.positive, b.positive) and np.array_equal(a.negative, b.negative)
    assert np.array_equal(a.previous, b.previous) and a.notes == b.notes


@pytest.mark.parametrize("seed", range(12))
def test_clicks_agree_with_the_reference(seed):
    reference = target()
    prompts = simulate_prompts(reference, (3.0, 2.0, 2.0), np.random.default_rng(seed))
    assert len(prompts.positive) + len(prompts.boxes) >= 1
    assert all(reference[tuple(p)] for p in prompts.positive)
    assert not any(reference[tuple(p)] for p in prompts.negative)
    for low, high in prompts.boxes:
        assert (low <= high).all()
    if prompts.notes[0] == "first":
        assert prompts.previous.sum() == 0 and len(prompts.negative) == 0
    else:
        errors = prompts.previous.astype(bool) != reference
        assert errors.any()
        assert all(errors[tuple(p)] for p in list(prompts.positive[1:]) + list(prompts.negative))


def test_corruptions_change_the_mask():
    reference = target()
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(40):
        mask, kind = corrupt_mask(reference, rng, 3)
        kinds.add(kind)
        assert mask.shape == reference.shape and mask.dtype == bool
    assert kinds == {"grow", "shrink", "shift", "cut", "blob", "empty_part"}


def test_only_boxes_and_corrections_when_configured():
    config = SimulationConfig(correction_probability=1.0)
    prompts = simulate_prompts(target(), (1.0, 1.0, 1.0), np.random.default_rng(1), config)
    assert prompts.notes[0].startswith("correction")
    with pytest.raises(ValueError, match="contains the object"):
        simulate_prompts(np.zeros((4, 4, 4), bool), (1.0, 1.0, 1.0), np.random.default_rng(1))


def test_error_click_goes_into_the_largest_error_with_its_sign():
    reference = target()
    rng = np.random.default_rng(3)
    missed = reference.copy()
    missed[:, :, :20] = False  # half of the object missed
    missed[2:4, 2:4, 2:4] = True  # and a small extra blob
    for _ in range(5):
        point, positive = error_click(missed, reference, (3.0, 2.0, 2.0), rng)
        assert positive and reference[point] and not missed[point] and point[2] < 20
    extra = reference.copy()
    extra[:, :, 30:] = True  # a large over-segmentation
    for _ in range(5):
        point, positive = error_click(extra, reference, (3.0, 2.0, 2.0), rng)
        assert not positive and extra[point] and not reference[point]
    assert error_click(reference, reference, (3.0, 2.0, 2.0), rng) is None


def test_rounds_follow_the_iterative_probability():
    rng = np.random.default_rng(0)
    assert {simulation_rounds(rng, SimulationConfig()) for _ in range(50)} == {0}
    drawn = [simulation_rounds(rng, SimulationConfig(iterative_probability=1.0, max_iterations=3)) for _ in range(200)]
    assert set(drawn) == {1, 2, 3}
    half = [simulation_rounds(rng, SimulationConfig(iterative_probability=0.5)) for _ in range(400)]
    assert 0.35 < np.mean(np.array(half) > 0) < 0.65


def test_a_shifted_mask_gets_one_click_to_add_and_one_to_remove():
    # Shifted along i, the missed and the extra crescents touch; they are still two regions of opposite sign.
    reference = target()
    shifted = np.roll(reference, 5, axis=2)
    for seed in range(4):
        positive, negative = correction_clicks(shifted, reference, (3.0, 2.0, 2.0), np.random.default_rng(seed), 2)
        assert len(positive) == 1 and len(negative) == 1
        assert reference[positive[0]] and not shifted[positive[0]]
        assert shifted[negative[0]] and not reference[negative[0]]


@pytest.mark.parametrize("seed", range(8))
def test_a_flat_box_is_a_rectangle_around_the_cross_section_of_one_slice(seed):
    reference = target()
    corners = flat_box(reference, np.random.default_rng(seed), jitter=0)
    flat = [axis for axis in range(3) if corners[0, axis] == corners[1, axis]]
    assert len(flat) == 1
    axis, index = flat[0], int(corners[0, flat[0]])
    section = np.take(reference, index, axis=axis)
    areas = reference.sum(axis=tuple(a for a in range(3) if a != axis))
    assert section.sum() >= 0.5 * areas.max()  # drawn where the object is large, as a user would
    rows = np.argwhere(section)
    other = [a for a in range(3) if a != axis]
    assert np.array_equal(corners[0, other], rows.min(0)) and np.array_equal(corners[1, other], rows.max(0))


def test_flat_boxes_appear_only_when_configured():
    config = SimulationConfig(correction_probability=0.0, box_probability=1.0, flat_box_probability=1.0)
    boxes = [simulate_prompts(target(), (3.0, 2.0, 2.0), np.random.default_rng(s), config).boxes[0] for s in range(6)]
    assert all(int((box[0] == box[1]).sum()) == 1 for box in boxes)
    solid = SimulationConfig(correction_probability=0.0, box_probability=1.0)
    boxes = [simulate_prompts(target(), (3.0, 2.0, 2.0), np.random.default_rng(s), solid).boxes[0] for s in range(6)]
    assert all(int((box[0] == box[1]).sum()) == 0 for box in boxes)
