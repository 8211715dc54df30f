"""A session click of the published 3DSAM-adapter procedure writes the crop's footprint, not the image.

The object still ends as the authors' whole-image mask: its voxels outside the new footprint are cleared,
and undo brings them back. Real CT (sarcoma STS_001), the tiny network with perturbed weights, 32 mm crops.
"""

from __future__ import annotations

import numpy as np
import pytest
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference import sam3d_published as published
from tsfm_backend.inference.interactive import Interaction, InteractiveSession
from tsfm_backend.inference.sam3d_predictor import Sam3DPredictor
from tsfm_backend.models.sam3d import PRESETS, sam3d_card
from tsfm_backend.volume import Volume

CROP = 32


@pytest.fixture(scope="module")
def sarcoma(shared_data) -> tuple[Volume, tuple[int, int, int]]:  # noqa: ANN001
    """STS_001 and the centre of its tumour (k, j, i)."""
    case = shared_data / "sts" / "STS_001"
    mask = read_volume(case / "mask.nii.gz").array > 0
    return read_volume(case / "ct.nii.gz"), tuple(int(c) for c in np.round(np.argwhere(mask).mean(0)))


@pytest.fixture
def recorded(tiny_network, sarcoma, monkeypatch):  # noqa: ANN001, ANN201
    """(session, regions): each click's (roi start, region shape) as the session commits it."""
    volume, _ = sarcoma
    session = InteractiveSession(LoadedModel(tiny_network, sam3d_card(PRESETS["tiny"], "kits", "sam3d-tiny")), volume)
    regions: list[tuple[tuple[int, int, int], tuple[int, ...]]] = []
    commit = session._commit

    def recording(object_id, state, roi, region, prompts):  # noqa: ANN001, ANN202
        regions.append((roi.start, region.shape))
        return commit(object_id, state, roi, region, prompts)

    monkeypatch.setattr(session, "_commit", recording)
    return session, regions


def expected_footprint(tiny_network, volume: Volume, clicks) -> published.Footprint:  # noqa: ANN001
    card = sam3d_card(PRESETS["tiny"], "kits", "sam3d-tiny")
    predictor = Sam3DPredictor(tiny_network)
    return published.predict_footprint(published.prepare(volume.array, volume.spacing_kji, card.normalization),
                                       clicks, lambda c, p: predictor.predict(c, p, outside_ok=True), CROP)


def test_a_click_returns_the_footprint_and_a_later_one_clears_the_object_outside_its_own(
        tiny_network, sarcoma, recorded):
    volume, centre = sarcoma
    session, regions = recorded
    first = expected_footprint(tiny_network, volume, [centre])
    session.interact(Interaction("point", point=centre))
    assert regions == [(first.start, first.values.shape)]
    assert np.prod(first.values.shape) * 20 < np.prod(volume.shape)  # a 32 mm cube, not the image
    np.testing.assert_array_equal(session.mask(1), first.into(volume.shape))
    assert first.values.any()

    # A second click 40 mm away moves the crop (midpoint of the clicks); the first footprint's voxels the
    # new crop does not reach are cleared, as in the published whole-image mask.
    far = (centre[0], centre[1] + int(round(40 / volume.spacing_kji[1])), centre[2])
    second = expected_footprint(tiny_network, volume, [centre, far])
    before = session.mask(1)
    session.interact(Interaction("point", point=far))
    np.testing.assert_array_equal(session.mask(1), second.into(volume.shape))
    start, shape = regions[-1]
    stop = np.add(start, shape)
    old = published.object_box(before)
    assert np.array_equal(start, np.minimum(second.start, old[0]))
    assert np.array_equal(stop, np.maximum(np.add(second.start, second.values.shape), old[1]))
    assert np.prod(shape) < np.prod(volume.shape)
    assert (before.astype(bool) & ~second.into(volume.shape).astype(bool)).any(), "nothing was cleared"

    session.undo(1)
    np.testing.assert_array_equal(session.mask(1), before)


def test_a_seeded_mask_is_replaced_by_the_whole_image_mask(tiny_network, sarcoma, recorded):
    volume, centre = sarcoma
    session, regions = recorded
    seeded = np.zeros(volume.shape, dtype=np.uint8)
    seeded[0, 0, 0] = seeded[-1, -1, -1] = 1  # corners far from the click: only a whole-image box holds them
    session.set_mask(1, seeded)
    session.interact(Interaction("point", point=centre))
    assert regions[-1] == ((0, 0, 0), volume.shape)
    np.testing.assert_array_equal(session.mask(1),
                                  expected_footprint(tiny_network, volume, [centre]).into(volume.shape))


def test_replacing_covers_the_footprint_and_the_previous_object_only():
    footprint = published.Footprint((2, 3, 4), np.ones((2, 2, 2), dtype=np.uint8))
    previous = np.zeros((10, 10, 10), dtype=np.uint8)
    assert published.replacing(footprint, previous).start == (2, 3, 4)
    previous[7, 1, 5] = 1
    update = published.replacing(footprint, previous)
    assert update.start == (2, 1, 4) and update.values.shape == (6, 4, 2)
    written = previous.copy()
    written[tuple(slice(s, s + n) for s, n in zip(update.start, update.values.shape, strict=True))] = update.values
    np.testing.assert_array_equal(written, footprint.into((10, 10, 10)))
    empty = published.replacing(published.Footprint((0, 0, 0), np.zeros((0, 0, 0), np.uint8)), np.zeros((4, 4, 4)))
    assert empty.values.size == 0
