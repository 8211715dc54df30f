"""Training's simulated prompts: reproducible, and each click lands where its sign says."""

from __future__ import annotations

import numpy as np
import pytest
from tsfm_training.objectives.click_simulation import (
    SimulationConfig,
    corrupt_mask,
    simulate_prompts,
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
