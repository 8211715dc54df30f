"""The evaluation click policy on synthetic masks where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from tsfm_backend.inference.click_policy import (
    PolicyClick,
    deepest_voxel,
    dice,
    first_click,
    largest_error_region,
    next_click,
    run_protocol,
)


def box_mask(shape, low, high) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(a, b + 1) for a, b in zip(low, high, strict=True))] = 1
    return mask


def test_first_click_is_the_centre_of_a_box():
    reference = box_mask((20, 30, 40), (2, 5, 10), (12, 15, 20))
    click = first_click(reference, (1.0, 1.0, 1.0))
    assert click == PolicyClick((7, 10, 15), True)
    # Where the thinnest axis makes many voxels equally deep, the first in C order wins.
    flat = box_mask((20, 30, 40), (2, 5, 10), (12, 25, 30))
    assert first_click(flat, (1.0, 1.0, 1.0)).point == (7, 10, 15)


def test_spacing_moves_the_deepest_voxel():
    # Two blobs: a 9-voxel cube, and a slab 5 voxels thin along k but 15 wide. In voxels the cube is
    # deeper; once k voxels are 5 mm thick, the slab is.
    mask = box_mask((30, 30, 30), (2, 2, 2), (10, 10, 10)) | box_mask((30, 30, 30), (2, 14, 14), (6, 28, 28))
    assert deepest_voxel(mask > 0, (1.0, 1.0, 1.0)) == (6, 6, 6)
    k, j, i = deepest_voxel(mask > 0, (5.0, 1.0, 1.0))
    assert (j, i) == (21, 21) and 3 <= k <= 5


def test_border_of_the_array_counts_as_outside():
    mask = np.ones((9, 9, 9), dtype=np.uint8)
    assert deepest_voxel(mask > 0, (1.0, 1.0, 1.0)) == (4, 4, 4)


def test_next_click_targets_the_largest_missed_region():
    reference = box_mask((20, 40, 40), (2, 2, 2), (17, 37, 37))
    prediction = reference.copy()
    prediction[2:18, 2:20, 2:38] = 0       # large miss
    prediction[0:1, 38:40, 0:3] = 1        # small extra, not touching the miss
    region, missed = largest_error_region(prediction, reference)
    assert missed and region.sum() == 16 * 18 * 36
    click = next_click(prediction, reference, (1.0, 1.0, 1.0))
    assert click.positive and prediction[click.point] == 0 and reference[click.point] == 1
    assert 9 <= click.point[0] <= 10 and 9 <= click.point[1] <= 12  # 8 voxels from every border


def test_next_click_is_negative_for_the_largest_extra_region():
    reference = box_mask((20, 40, 40), (5, 5, 5), (10, 10, 10))
    prediction = reference.copy()
    prediction[12:20, 20:40, 20:40] = 1
    click = next_click(prediction, reference, (1.0, 1.0, 1.0))
    assert not click.positive and prediction[click.point] == 1 and reference[click.point] == 0
    assert 12 <= click.point[0] < 20 and 20 <= click.point[1] and 20 <= click.point[2]


def test_a_shifted_mask_gets_a_negative_click_in_its_extra_part():
    # The prediction is the reference moved 6 voxels along i: the missed and the extra slabs touch the
    # overlap's faces and each other's edges, yet each keeps its own sign. The extra slab is the larger.
    reference = box_mask((20, 30, 40), (5, 5, 5), (14, 24, 20))
    prediction = box_mask((20, 30, 40), (4, 4, 11), (15, 25, 26))
    region, missed = largest_error_region(prediction, reference)
    assert not missed and not (region & (reference > 0)).any()
    click = next_click(prediction, reference, (1.0, 1.0, 1.0))
    assert not click.positive and prediction[click.point] == 1 and reference[click.point] == 0


def test_no_click_when_perfect_and_empty_region_refused():
    reference = box_mask((8, 8, 8), (2, 2, 2), (5, 5, 5))
    assert next_click(reference, reference, (1.0, 1.0, 1.0)) is None
    with pytest.raises(ValueError, match="empty region"):
        first_click(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0))


def test_dice():
    a = box_mask((10, 10, 10), (0, 0, 0), (4, 9, 9))
    b = box_mask((10, 10, 10), (0, 0, 0), (9, 9, 9))
    assert dice(a, b) == pytest.approx(2 * 500 / 1500)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_protocol_feeds_clicks_and_records_dice():
    reference = box_mask((20, 40, 40), (2, 2, 2), (17, 37, 37))
    seen: list[PolicyClick] = []

    def segment(click: PolicyClick) -> np.ndarray:
        seen.append(click)
        out = np.zeros_like(reference)
        out[:, :, : 20 + 8 * (len(seen) - 1)] = 1  # grows toward the reference, with extra k rows
        return out

    steps = run_protocol(segment, reference, (1.0, 1.0, 1.0), 3)
    assert len(steps) == 3 and seen[0] == first_click(reference, (1.0, 1.0, 1.0))
    assert [s.click for s in steps] == seen
    assert steps[0].dice < steps[2].dice
    assert all(s.seconds >= 0 for s in steps)


def test_protocol_stops_clicking_when_perfect():
    reference = box_mask((10, 10, 10), (2, 2, 2), (7, 7, 7))
    calls = []
    steps = run_protocol(lambda c: calls.append(c) or reference, reference, (1.0, 1.0, 1.0), 5)
    assert len(calls) == 1 and [s.dice for s in steps] == [1.0] * 5
