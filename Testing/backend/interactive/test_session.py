"""Session semantics with a predictable stand-in network: updates, undo/redo, objects, seeding, ROI growth."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from support.interactive_models import ellipsoid_volume, standin_card
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.inference.interactive import (
    MAX_ROI_VOXELS,
    Interaction,
    InteractiveSession,
    MaskUpdate,
    PromptError,
)
from tsfm_backend.volume import Volume


def click(point, positive=True, object_id=1) -> Interaction:
    return Interaction("point", positive, point=point, object_id=object_id)


def paste(mask: np.ndarray, update: MaskUpdate) -> np.ndarray:
    out = mask.copy()
    if not update.empty:
        box = tuple(slice(o, o + n) for o, n in zip(update.origin, update.mask.shape, strict=True))
        out[box] = update.mask
    return out


def test_update_is_the_tight_box_of_the_change(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue)
    before = session.mask(1) if session.objects else np.zeros(soft_tissue.shape, np.uint8)
    update = session.interact(click((20, 48, 48)))
    after = session.mask(1)
    assert update.mask.dtype == np.uint8 and update.object_id == 1
    assert after[20, 48, 48] == 1 and 0 < after.sum() < after.size // 10
    assert np.array_equal(paste(before, update), after)
    changed = np.argwhere(before != after)
    assert tuple(changed.min(0)) == update.origin
    assert tuple(changed.max(0) - changed.min(0) + 1) == update.mask.shape

    second = session.interact(click((20, 60, 48)))
    assert np.array_equal(paste(after, second), session.mask(1))
    # Only the new ball changed: the box of the second update lies around the second click.
    assert second.origin[1] > 48 and second.mask.shape[1] < 20


def test_repeating_a_click_changes_nothing(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue)
    session.interact(click((20, 48, 48)))
    again = session.interact(click((20, 48, 48)))
    assert again.empty and again.mask.shape == (0, 0, 0)


def test_negative_click_removes(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue)
    session.interact(click((20, 48, 48)))
    session.interact(click((20, 48, 48), positive=False))
    assert session.mask(1)[20, 48, 48] == 0


def test_undo_redo_walk_the_history(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue)
    session.interact(click((20, 40, 40)))
    first = session.mask(1)
    session.interact(click((20, 60, 60)))
    second = session.mask(1)
    undone = session.undo(1)
    assert np.array_equal(session.mask(1), first)
    assert np.array_equal(paste(second, undone), first)
    session.undo(1)
    assert session.mask(1).sum() == 0
    assert session.undo(1).empty
    session.redo(1)
    assert np.array_equal(session.mask(1), first)
    session.redo(1)
    assert np.array_equal(session.mask(1), second)
    assert session.redo(1).empty
    # A new interaction after an undo drops the redo branch, and the undone click is forgotten.
    session.undo(1)
    session.interact(click((10, 48, 70)))
    assert session.redo(1).empty
    assert session.mask(1)[20, 60, 60] == 0 and session.mask(1)[20, 40, 40] == 1


def test_objects_are_isolated_and_reset(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue)
    session.interact(click((20, 40, 40), object_id=1))
    session.interact(click((20, 60, 60), object_id=2))
    one, two = session.mask(1), session.mask(2)
    assert one[20, 40, 40] and not one[20, 60, 60]
    assert two[20, 60, 60] and not two[20, 40, 40]
    session.undo(2)
    assert np.array_equal(session.mask(1), one) and session.mask(2).sum() == 0
    session.reset(1)
    with pytest.raises(PromptError, match="unknown object 1"):
        session.mask(1)
    assert 2 in session.objects
    session.reset()
    assert not session.objects


def test_set_mask_reseeds_and_is_undoable(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue)
    seed = np.zeros(soft_tissue.shape, np.uint8)
    seed[18:23, 30:50, 30:50] = 1
    update = session.set_mask(3, seed)
    assert np.array_equal(session.mask(3), seed)
    assert update.origin == (18, 30, 30) and update.mask.shape == (5, 20, 20)
    # The stand-in keeps the previous mask: a click adds to the seeded mask instead of replacing it.
    session.interact(click((20, 70, 70), object_id=3))
    result = session.mask(3)
    assert result[20, 40, 40] and result[20, 70, 70]
    session.undo(3)
    session.undo(3)
    assert session.mask(3).sum() == 0
    with pytest.raises(PromptError, match="mask shape"):
        session.set_mask(3, seed[:-1])


def test_roi_grows_when_the_mask_touches_its_border(bright_model):
    volume, inside = ellipsoid_volume(shape=(48, 128, 128), centre=(24, 64, 64), radii_mm=(40.0, 50.0, 50.0))
    session = InteractiveSession(bright_model, volume)
    base = session._base_roi_size()
    assert base[1] < 2 * 50  # the object is wider than the first ROI
    session.interact(click((24, 64, 64)))
    mask = session.mask(1)
    roi = session.objects[1].roi
    assert roi.size[1] > base[1] and roi.size[2] > base[2]
    assert len(bright_model.network.calls) >= 2 and bright_model.network.calls[-1] != bright_model.network.calls[0]
    coords = np.argwhere(mask)
    assert coords[:, 1].max() - coords[:, 1].min() + 1 > base[1]
    dice = 2 * (mask.astype(bool) & inside).sum() / (mask.sum() + inside.sum())
    assert dice > 0.95


def test_roi_moves_to_a_click_outside_it(echo_model):
    volume, _ = ellipsoid_volume(shape=(40, 200, 200), centre=(20, 100, 100))
    session = InteractiveSession(echo_model, volume)
    session.interact(click((20, 30, 30)))
    first = session.objects[1].roi
    session.interact(click((20, 170, 170)))
    moved = session.objects[1].roi
    assert moved != first
    mask = session.mask(1)
    assert mask[20, 30, 30] and mask[20, 170, 170]


@pytest.mark.parametrize(("interaction", "message"), [
    (Interaction("point", True, point=(40, 10, 10)), r"outside the image of shape \(K, J, I\) = \(40, 96, 96\)"),
    (Interaction("point", True, point=(-1, 10, 10)), "outside the image"),
    (Interaction("point", True, point=None), "needs a point"),
    (Interaction("box", True, box=((5, 10, 10), (5, 30, 10))), "zero size along k and i"),
    (Interaction("box", True, box=((5, 10, 10), (9, 30, 300))), "box corner .* outside the image"),
    (Interaction("box", False, box=((5, 10, 10), (9, 30, 30))), "negative click"),
    (Interaction("lasso", True, point=(5, 5, 5)), "kind 'lasso'"),
    (Interaction("point", True, point=(5, 5, 5), object_id=0), "object id must be a positive integer"),
])
def test_bad_prompts_are_refused_clearly(echo_model, soft_tissue, interaction, message):
    session = InteractiveSession(echo_model, soft_tissue)
    with pytest.raises(PromptError, match=message):
        session.interact(interaction)
    assert not session.objects


def test_unknown_object_is_refused(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue)
    session.interact(click((20, 48, 48)))
    for call in (session.undo, session.redo, session.mask, session.reset):
        with pytest.raises(PromptError, match=r"unknown object 7; objects in this session: \[1\]"):
            call(7)


def test_box_prompt_fills_the_box(echo_model, soft_tissue):
    session = InteractiveSession(echo_model, soft_tissue)
    session.interact(Interaction("box", True, box=((16, 40, 40), (24, 56, 56))))
    mask = session.mask(1)
    assert mask[16:25, 42:55, 42:55].all()
    assert not mask[:, :30].any() and not mask[:, 70:].any()


def test_a_box_on_one_slice_fills_that_slice_only(echo_model, soft_tissue):
    """A 2D box (drawn in a slice view) is a rectangle on one slice of the image."""
    session = InteractiveSession(echo_model, soft_tissue)
    session.interact(Interaction("box", True, box=((20, 40, 40), (20, 56, 56))))
    mask = session.mask(1)
    assert mask[20, 42:55, 42:55].all()
    assert not mask[:18].any() and not mask[23:].any()  # the model grid (2 mm) covers about one image slice


def test_modality_is_detected_or_taken_from_the_caller(echo_model, soft_tissue):
    """A modality-aware card windows CT in HU and other modalities between percentiles of the image."""
    card = replace(echo_model.card, normalization={
        "scheme": "by_modality", "CT": {"scheme": "hu_window", "lower": -100.0, "upper": 300.0},
        "MR": {"scheme": "percentile_window", "lower_percentile": 1.0, "upper_percentile": 99.0}})
    loaded = LoadedModel(echo_model.network, card)
    air = Volume(np.where(np.arange(40)[:, None, None] < 2, -1000.0, soft_tissue.array).astype(np.float32),
                 soft_tissue.spacing)
    assert InteractiveSession(loaded, air).modality == "CT"
    assert InteractiveSession(loaded, soft_tissue).modality == "MR"  # no air: not CT
    session = InteractiveSession(loaded, soft_tissue, modality="mr")
    assert session.modality == "MR" and session.normalization["scheme"] == "hu_window"
    assert session.normalization["lower"] == pytest.approx(40.0) and session.normalization["upper"] == pytest.approx(200.0)
    with pytest.raises(ValueError, match="normalises CT, MR images, not PET"):
        InteractiveSession(loaded, soft_tissue, modality="PT")


@pytest.mark.parametrize("spacing_mm", [0.01, 0.3, 100.0])
def test_a_click_region_stays_under_the_voxel_cap_whatever_the_spacing(echo_model, spacing_mm):
    cap = 64**3
    patch = standin_card().patch_size
    volume, _ = ellipsoid_volume(shape=(40, 60, 60), centre=(20, 30, 30), radii_mm=(3 * spacing_mm,) * 3,
                                 spacing_kji=(spacing_mm,) * 3)
    session = InteractiveSession(echo_model, volume, max_roi_voxels=cap)
    update = session.interact(click((20, 30, 30)))
    roi = session.objects[1].roi
    assert math.prod(roi.size) <= cap and update.mask.size <= cap
    # The model grid is bounded too: a 100 mm voxel spans 50 model voxels of 2 mm.
    assert all(g <= 2 * p for g, p in zip(roi.grid, patch, strict=True))
    assert all(math.prod(shape) <= math.prod(2 * p for p in patch) for shape in echo_model.network.calls)


def test_the_default_cap_bounds_a_bundled_size_model_on_a_0_3_mm_image(echo_model):
    # The bundled click models see 48 x 96 x 96 voxels at 3 x 2 x 2 mm: 480 x 640 x 640 voxels at 0.3 mm.
    loaded = replace(echo_model, card=replace(echo_model.card, patch_size=(48, 96, 96), spacing=(3.0, 2.0, 2.0)))
    volume = Volume(np.zeros((8, 8, 8), np.int16), spacing=(0.3, 0.3, 0.3))
    session = InteractiveSession(loaded, volume)
    wanted = tuple(round(p * m / 0.3) for p, m in zip((48, 96, 96), (3.0, 2.0, 2.0), strict=True))
    assert math.prod(wanted) > 5 * MAX_ROI_VOXELS
    base = session._base_roi_size()
    size, grid = session._fit(base)
    grown, _ = session._fit(tuple(2 * n for n in wanted))
    assert math.prod(base) <= MAX_ROI_VOXELS and math.prod(size) <= MAX_ROI_VOXELS
    assert math.prod(grown) <= MAX_ROI_VOXELS
    # Shrunk evenly, at the model's own spacing: the grid follows the region.
    assert all(abs(g * m - n * 0.3) <= 2 * m * d for g, m, n, d in zip(
        grid, (3.0, 2.0, 2.0), size, session.divisor, strict=True))
