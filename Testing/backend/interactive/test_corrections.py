"""Local corrections: only the changes of the click's sign connected to the click survive; the session
applies them to clicks on an object that already has a mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from tsfm_backend.inference.corrections import click_ball, correct_locally, depth_mm, negative_reach_mm
from tsfm_backend.inference.interactive import Interaction, InteractiveSession


def test_changes_away_from_the_click_are_reverted():
    old = np.zeros((10, 40, 40), np.uint8)
    old[2:8, 5:15, 5:15] = 1      # accepted part, far from the click
    new = np.zeros_like(old)
    new[2:8, 5:12, 5:15] = 1      # the network also shrank it (a change away from the click)
    new[2:8, 25:35, 25:35] = 1    # and added what the click asked for
    new[2:8, 36:39, 2:5] = 1      # and an unconnected addition elsewhere
    kept = correct_locally(old, new, (5, 30, 30), True, (2.0, 1.0, 1.0), 2.0)
    assert kept[2:8, 25:35, 25:35].all()
    assert kept[2:8, 5:15, 5:15].all()  # the far shrink is reverted
    assert not kept[2:8, 36:39, 2:5].any()  # the far addition too
    assert np.array_equal(correct_locally(old, old, (5, 30, 30), True, (2.0, 1.0, 1.0), 2.0), old)


def test_a_positive_click_never_removes_and_a_negative_click_never_adds():
    old = np.zeros((10, 40, 40), np.uint8)
    old[2:8, 10:30, 10:30] = 1
    new = old.copy()
    new[2:8, 10:30, 28:36] = 1    # grows towards the click ...
    new[2:8, 10:30, 10:14] = 0    # ... and moves the boundary next to it inward (connected to the growth)
    kept = correct_locally(old, new, (5, 20, 33), True, (2.0, 1.0, 1.0), 2.0)
    assert kept[2:8, 10:30, 30:36].all() and kept[2:8, 10:30, 10:14].all()
    shrunk = old.copy()
    shrunk[2:8, 10:30, 24:30] = 0  # removes what the negative click asked ...
    shrunk[2:8, 30:33, 10:30] = 1  # ... and adds a rim next to it
    kept = correct_locally(old, shrunk, (5, 20, 27), False, (2.0, 1.0, 1.0), 2.0)
    assert not kept[2:8, 10:30, 24:30].any() and kept[2:8, 10:30, 10:24].all()
    assert not kept[2:8, 30:33, :].any()


def test_a_negative_click_removes_only_within_its_reach():
    old = np.zeros((10, 60, 60), np.uint8)
    old[1:9, 5:55, 5:55] = 1
    new = old.copy()
    new[1:9, 5:55, 20:55] = 0     # the network takes most of the object with the click's region
    click = (5, 30, 52)           # 3 mm inside the border: it may remove within 15 mm of itself
    assert negative_reach_mm(old, click, (2.0, 1.0, 1.0)) == 15.0
    kept = correct_locally(old, new, click, False, (2.0, 1.0, 1.0), 2.0)
    assert not kept[5, 30, 38:55].any() and kept[5, 30, 5:36].all()  # 14 mm off along i is removed
    assert not kept[5, 16, 52] and kept[5, 14, 52]  # 14 mm off along j is removed, 16 mm is kept


def test_a_prediction_whose_changes_all_miss_the_click_changes_nothing():
    old = np.zeros((6, 20, 20), np.uint8)
    old[1:5, 10:18, 10:18] = 1
    new = old.copy()
    new[1:3, 1:4, 1:4] = 1
    assert np.array_equal(correct_locally(old, new, (4, 15, 15), True, (1.0, 1.0, 1.0), 1.0), old)
    assert np.array_equal(correct_locally(old, np.zeros_like(old), (4, 2, 2), False, (1.0, 1.0, 1.0), 1.0), old)


def test_click_ball_is_an_ellipsoid_in_voxels():
    ball = click_ball((5, 9, 9), (2, 4, 4), (1.0, 2.0, 2.0))
    assert ball[2, 4, 4] and ball[2, 4, 6] and not ball[2, 4, 7] and ball[1, 4, 4] and not ball[0, 4, 4]


def test_the_session_localises_corrections_but_not_first_clicks(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue, local_corrections=True)
    session.interact(Interaction("point", True, point=(20, 30, 30)))
    first = session.mask(1)
    assert first[20, 30, 30]
    session.interact(Interaction("point", True, point=(20, 60, 60)))  # a second, separate part
    both = session.mask(1)
    assert both[20, 60, 60] and np.array_equal(both[:, :45, :45], first[:, :45, :45])
    session.interact(Interaction("point", False, point=(20, 60, 60)))  # removes only what it touches
    assert not session.mask(1)[20, 60, 60] and np.array_equal(session.mask(1), first)


def test_the_depth_of_a_click_equals_the_whole_distance_map_at_it():
    """The depth is computed in a box around the click only; it must equal the distance map of the whole
    region, with the region's border counting as outside, whatever the mask, spacing and click."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = tuple(int(n) for n in rng.integers(5, 40, 3))
        mask = ndimage.gaussian_filter(rng.random(shape), 2.0) > rng.uniform(0.45, 0.55)
        if rng.random() < 0.2:
            mask = np.ones(shape, bool)  # the nearest outside voxel is beyond the region's border
        spacing = tuple(float(s) for s in rng.uniform(0.3, 4.0, 3))
        point = tuple(int(rng.integers(0, n)) for n in shape)
        whole = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1][point]
        assert depth_mm(mask, point, spacing) == pytest.approx(whole, abs=1e-9)
