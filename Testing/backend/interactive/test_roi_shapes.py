"""The network sees only a few fixed input shapes: ROI grids snap to steps and overhang the image border."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from support.interactive_models import ellipsoid_volume
from tsfm_backend.inference import roi as roi_geometry
from tsfm_backend.inference.interactive import Interaction, InteractiveSession


def allowed_shapes() -> set[tuple[int, ...]]:
    """The stand-in card's patch (16, 32, 32) times 1, 1.5 and 2, on the stand-in's divisor 4."""
    return set(itertools.product((16, 24, 32), (32, 48, 64), (32, 48, 64)))


def test_grid_steps_are_multiples_of_the_divisor():
    steps = roi_geometry.grid_steps((48, 96, 96), (16, 32, 32))
    assert steps == [(48, 80, 96), (96, 160, 192), (96, 160, 192)]
    # A base that is not a divisor multiple is rounded up first.
    assert roi_geometry.grid_steps((10, 30, 30), (4, 4, 4)) == [(12, 20, 24), (32, 48, 64), (32, 48, 64)]


@pytest.mark.parametrize(("grid", "snapped"), [
    ((48, 96, 96), (48, 96, 96)),
    ((52, 100, 96), (80, 160, 96)),
    ((81, 161, 193), (96, 192, 192)),
    ((16, 32, 32), (48, 96, 96)),
])
def test_snap_rounds_up_to_the_next_step(grid, snapped):
    steps = roi_geometry.grid_steps((48, 96, 96), (16, 32, 32))
    assert roi_geometry.snap_grid(grid, steps) == snapped


def test_grown_roi_overhangs_a_short_image_instead_of_taking_its_size(bright_model):
    # 20 slices: fewer than a grown ROI (up to 32 slices at 2 mm), more than the base ROI (16 slices).
    volume, inside = ellipsoid_volume(shape=(20, 128, 128), centre=(10, 64, 64), radii_mm=(30.0, 45.0, 45.0))
    session = InteractiveSession(bright_model, volume)
    session.interact(Interaction("point", True, point=(10, 64, 64)))
    calls = bright_model.network.calls
    assert len(calls) >= 2, "the object is larger than the base ROI, so the ROI must grow"
    assert set(calls) <= allowed_shapes(), calls
    roi = session.objects[1].roi
    assert roi.size[0] > volume.shape[0] and roi.start[0] < 0  # padded, not clipped to the 20 slices
    mask = session.mask(1).astype(bool)
    assert 2 * (mask & inside).sum() / (mask.sum() + inside.sum()) > 0.95


def test_clicks_all_over_a_small_image_use_only_the_fixed_shapes(bright_model):
    # Smaller than a grown ROI along k and j: the old clipping gave a new shape at every border.
    volume, _ = ellipsoid_volume(shape=(22, 70, 150), centre=(11, 35, 75), radii_mm=(30.0, 40.0, 60.0))
    session = InteractiveSession(bright_model, volume)
    rng = np.random.default_rng(0)
    points = [(11, 35, 75), (0, 0, 0), (21, 69, 149)] + [
        tuple(int(rng.integers(0, n)) for n in volume.shape) for _ in range(6)]
    for index, point in enumerate(points):
        session.interact(Interaction("point", True, point=point, object_id=1 + index % 3))
    calls = bright_model.network.calls
    assert len(calls) > len(points), "some ROIs must have grown"
    assert set(calls) <= allowed_shapes(), calls
