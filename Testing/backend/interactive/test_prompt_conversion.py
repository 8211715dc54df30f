"""Scribbles, lassos, negative and degenerate boxes turned into the clicks and boxes the engine takes."""

from __future__ import annotations

import numpy as np
from tsfm_backend.inference import prompt_conversion as conversion

SPACING = (3.0, 1.0, 1.0)


def disk(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    jj, ii = np.ogrid[:shape[0], :shape[1]]
    return ((jj - centre[0]) ** 2 + (ii - centre[1]) ** 2) <= radius ** 2


def test_a_scribble_becomes_clicks_spread_along_it_the_first_mid_stroke() -> None:
    stroke = np.zeros((1, 1, 61), dtype=bool)
    stroke[0, 0, :] = True
    clicks = conversion.clicks_along(stroke, (10, 20, 30), SPACING, max_clicks=3, click_spacing_mm=15.0)
    assert clicks[0] == (10, 20, 60)  # the middle of i = 30..90
    assert sorted(clicks[1:]) == [(10, 20, 30), (10, 20, 90)]  # then the two ends, 30 mm away
    # A stroke shorter than the click spacing needs one click only.
    assert conversion.clicks_along(stroke[..., :10], (0, 0, 0), SPACING, click_spacing_mm=15.0) == [(0, 0, 4)]


def test_spacing_is_in_millimetres() -> None:
    column = np.ones((11, 1, 1), dtype=bool)  # 30 mm along k at 3 mm
    assert len(conversion.clicks_along(column, (0, 0, 0), SPACING, max_clicks=5, click_spacing_mm=14.0)) == 3
    assert len(conversion.clicks_along(column, (0, 0, 0), (1.0, 1.0, 1.0), max_clicks=5, click_spacing_mm=14.0)) == 1


def test_a_positive_lasso_is_the_rectangle_around_it_plus_clicks_deep_inside() -> None:
    fill = disk((40, 40), (20, 20), 15)[None]
    prompt = conversion.lasso_prompt(fill, (7, 100, 200), SPACING, positive=True)
    assert prompt.box == ((7, 105, 205), (7, 135, 235))
    assert prompt.positive[0] == (7, 120, 220)  # the deepest voxel: the centre
    for _, j, i in prompt.positive:
        assert fill[0, j - 100, i - 200] and (j - 120) ** 2 + (i - 220) ** 2 <= 7.5 ** 2 + 1e-9  # half-depth or deeper
    assert not prompt.negative


def test_negative_prompts_click_only_where_they_cover_the_object() -> None:
    current = np.zeros((1, 40, 40), dtype=np.uint8)
    current[0, 20:, :] = 1
    fill = disk((40, 40), (20, 20), 15)[None]
    prompt = conversion.lasso_prompt(fill, (3, 0, 0), SPACING, positive=False, current=current)
    assert prompt.box is None and not prompt.positive and prompt.negative
    assert all(current[0, j, i] and fill[0, j, i] for _, j, i in prompt.negative)
    # Nothing of the object under it, or no object yet: nothing to do.
    assert conversion.lasso_prompt(fill, (3, 0, 0), SPACING, False, np.zeros_like(current)).empty
    assert conversion.lasso_prompt(fill, (3, 0, 0), SPACING, False, None).empty
    box = conversion.box_prompt(((3, 0, 0), (3, 39, 39)), False, SPACING, current)
    assert box.negative and all(current[0, j, i] for _, j, i in box.negative)


def test_boxes_stay_boxes_unless_they_are_lines_or_points() -> None:
    flat = ((5, 10, 10), (5, 30, 40))
    assert conversion.box_prompt(flat, True, SPACING) == conversion.ConvertedPrompt(box=flat)
    solid = ((1, 10, 10), (5, 30, 40))
    assert conversion.box_prompt(solid, True, SPACING).box == solid
    line = conversion.box_prompt(((5, 10, 10), (5, 10, 60)), True, SPACING)
    assert line.box is None and len(line.positive) == 3 and all(p[:2] == (5, 10) for p in line.positive)
    assert conversion.box_prompt(((5, 10, 10), (5, 10, 10)), True, SPACING).positive == ((5, 10, 10),)


def test_a_positive_scribble_clicks_where_the_object_is_still_missing() -> None:
    stroke = np.zeros((1, 1, 60), dtype=bool)
    stroke[0, 0, :] = True
    current = np.zeros((1, 1, 60), dtype=np.uint8)
    current[0, 0, :40] = 1
    prompt = conversion.scribble_prompt(stroke, (0, 0, 0), SPACING, True, current)
    assert prompt.positive and all(i >= 40 for _, _, i in prompt.positive)
    negative = conversion.scribble_prompt(stroke, (0, 0, 0), SPACING, False, current)
    assert negative.negative and all(i < 40 for _, _, i in negative.negative)


def test_sampling_cost_is_bounded_by_a_stride_and_deterministic() -> None:
    grid = np.indices((64, 64, 64)) - 32
    block = np.sum(grid ** 2, axis=0) <= 30 ** 2  # 113 000 voxels: sampled on a stride
    first = conversion.clicks_inside(block, (0, 0, 0), (1.0, 1.0, 1.0), max_clicks=3)
    assert first == conversion.clicks_inside(block, (0, 0, 0), (1.0, 1.0, 1.0), max_clicks=3)
    assert len(first) == 3 and first[0] == (32, 32, 32)
    assert conversion.clicks_inside(np.zeros((2, 2, 2), dtype=bool), (0, 0, 0), SPACING) == []
