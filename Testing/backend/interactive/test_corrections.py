"""Local corrections: only the changes connected to the click survive; the session applies them to clicks
on an object that already has a mask."""

from __future__ import annotations

import numpy as np
from tsfm_backend.inference.corrections import click_ball, keep_changes_near
from tsfm_backend.inference.interactive import Interaction, InteractiveSession


def test_changes_away_from_the_click_are_reverted():
    old = np.zeros((10, 40, 40), np.uint8)
    old[2:8, 5:15, 5:15] = 1      # accepted part, far from the click
    new = np.zeros_like(old)
    new[2:8, 5:12, 5:15] = 1      # the network also shrank it (a change away from the click)
    new[2:8, 25:35, 25:35] = 1    # and added what the click asked for
    kept = keep_changes_near(old, new, (5, 30, 30), (1.0, 2.0, 2.0))
    assert kept[2:8, 25:35, 25:35].all()
    assert kept[2:8, 5:15, 5:15].all()  # the far shrink is reverted
    assert np.array_equal(keep_changes_near(old, old, (5, 30, 30), (1.0, 2.0, 2.0)), old)


def test_a_prediction_whose_changes_all_miss_the_click_is_kept():
    old = np.zeros((6, 20, 20), np.uint8)
    new = old.copy()
    new[1:3, 1:4, 1:4] = 1
    assert np.array_equal(keep_changes_near(old, new, (4, 15, 15), (1.0, 1.0, 1.0)), new)


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
