"""Deepgrow params to prompts, and which prompts a session that already ran some still needs."""

from __future__ import annotations

import pytest
from tsfm_backend.server.errors import BadInput, Invalid
from tsfm_backend.server.monailabel.prompts import (
    MAX_CLICKS,
    ClickPrompts,
    Prompt,
    click_prompts,
    job_options,
    plan,
)

SHAPE = (30, 80, 96)  # (K, J, I)


def test_points_travel_as_ijk_and_become_kji() -> None:
    prompts = click_prompts({"label": "tumour", "foreground": [[90, 10, 2], [1.0, 2.0, 3.0]],
                             "background": [[0, 79, 29]]}, SHAPE)
    assert prompts.foreground == ((2, 10, 90), (3, 2, 1)) and prompts.background == ((29, 79, 0),)
    assert prompts.box is None and prompts.label == "tumour" and prompts.reset is False


def test_an_roi_in_either_corner_order_is_clipped_to_the_image() -> None:
    prompts = click_prompts({"label": "t", "roi": [120, 10, 5, 60, 3, -4]}, SHAPE)
    assert prompts.box == ((0, 5, 10), (3, 60, 95))
    assert prompts.sequence() == [Prompt("box", True, box=((0, 5, 10), (3, 60, 95)))]
    with pytest.raises(BadInput, match="outside the image"):
        click_prompts({"label": "t", "roi": [200, 300, 5, 6, 1, 2]}, SHAPE)


@pytest.mark.parametrize(("params", "problem"), [
    ({"foreground": [[1, 1, 1]]}, "label"),
    ({"label": "", "foreground": [[1, 1, 1]]}, "label"),
    ({"label": "t", "foreground": [[96, 0, 0]]}, "outside the image"),
    ({"label": "t", "foreground": [[-1, 0, 0]]}, "outside the image"),
    ({"label": "t", "foreground": [[1, 1]]}, r"\[i, j, k\]"),
    ({"label": "t", "foreground": [[1, True, 1]]}, r"\[i, j, k\]"),
    ({"label": "t", "foreground": [[1, 1, 1.5]]}, r"\[i, j, k\]"),
    ({"label": "t", "foreground": {"a": 1}}, "list"),
    ({"label": "t"}, "no foreground"),
    ({"label": "t", "foreground": [[1, 1, 1]] * (MAX_CLICKS + 1)}, "at most"),
    ({"label": "t", "roi": [1, 2, 3]}, "roi"),
    ({"label": "t", "foreground": [[1, 1, 1]], "reset_state": "yes"}, "reset_state"),
])
def test_bad_params_name_the_problem(params: dict, problem: str) -> None:
    with pytest.raises(BadInput, match=problem):
        click_prompts(params, SHAPE)


def _clicks(foreground=(), background=(), box=None, reset=False) -> ClickPrompts:  # noqa: ANN001
    return ClickPrompts("t", tuple(foreground), tuple(background), box, reset)


def test_appended_clicks_are_all_that_runs() -> None:
    applied = _clicks([(1, 1, 1)], [(2, 2, 2)])
    start_over, prompts = plan(applied, _clicks([(1, 1, 1), (3, 3, 3)], [(2, 2, 2), (4, 4, 4)]))
    assert not start_over
    assert prompts == [Prompt("point", True, point=(3, 3, 3)), Prompt("point", False, point=(4, 4, 4))]
    assert plan(applied, applied) == (False, [])


@pytest.mark.parametrize("wanted", [
    _clicks([(9, 9, 9)], [(2, 2, 2)]),  # a click moved
    _clicks([], [(2, 2, 2)]),  # a click deleted
    _clicks([(1, 1, 1)], [(2, 2, 2)], box=((0, 0, 0), (3, 3, 3))),  # an ROI drawn
    _clicks([(1, 1, 1)], [(2, 2, 2)], reset=True),  # the plugin's reset_state
])
def test_anything_else_replays_the_whole_list_box_first(wanted: ClickPrompts) -> None:
    start_over, prompts = plan(_clicks([(1, 1, 1)], [(2, 2, 2)]), wanted)
    assert start_over and prompts == wanted.sequence()
    assert plan(None, wanted) == (True, wanted.sequence())


def test_job_options_come_from_params_and_ignore_monai_labels_own_keys() -> None:
    options = job_options({"fast": True, "tta": False, "result_extension": ".nrrd", "client_id": "user-xyz"})
    assert options.fast is True and options.tta is False
    with pytest.raises(Invalid, match="batch_size"):
        job_options({"batch_size": 0})
