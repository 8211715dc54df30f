"""SAM-Med3D in an ``InteractiveSession`` on a real sarcoma CT: crop placement, clicks fed in order with the
previous mask, the cached embedding, undo, and the prompts the model refuses.

The network is the ``tiny`` preset (64^3 crops at 1.5 mm) with weights made from each tensor's name, so
the masks mean nothing; what is checked is the procedure around the network.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.reference_outputs import load_script
from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.image_io import read_volume
from tsfm_backend.inference import sam_med3d as procedure
from tsfm_backend.inference.interactive import Interaction, InteractiveSession, PromptError
from tsfm_backend.models.sam_med3d import PRESETS, build, sam_med3d_card
from tsfm_backend.shared_data import shared_data_dir

WEIGHTS = load_script("make_suprem_swin_reference")
TUMOUR = (28, 102, 96)  # (k, j, i) inside STS_001's tumour


@pytest.fixture(scope="module")
def volume():
    return read_volume(shared_data_dir() / "sts" / "STS_001" / "ct.nii.gz")


def _loaded() -> LoadedModel:
    network = build(**PRESETS["tiny"]).eval()
    network.load_state_dict(WEIGHTS.reference_weights(network.state_dict()))
    return LoadedModel(network=network, card=sam_med3d_card(PRESETS["tiny"], "sam-med3d-tiny"))


def _session(volume) -> InteractiveSession:
    return InteractiveSession(_loaded(), volume, device="cpu")


def _click(point, positive=True, object_id=1) -> Interaction:
    return Interaction("point", positive=positive, point=point, object_id=object_id)


def _count_encodes(session: InteractiveSession) -> list[int]:
    calls = [0]
    encode = session._sam_med3d.network.encode

    def counting(crop):
        calls[0] += 1
        return encode(crop)

    session._sam_med3d.network.encode = counting
    return calls


def test_first_click_centres_the_crop_on_it(volume):
    session = _session(volume)
    update = session.interact(_click(TUMOUR))
    predictor = session._sam_med3d
    start, inside = predictor.crop([(TUMOUR, True)])
    canonical = procedure.click_to_canonical(predictor.grid, TUMOUR)
    assert inside == [(tuple(c - s for c, s in zip(canonical, start, strict=True)), True)]
    assert inside[0][0] == (32, 32, 32)  # tio.CropOrPad around a one-voxel box, crop of 64
    # The update covers the crop's footprint: 96 mm around the click on the image grid.
    origin, region = procedure.paste(np.ones((64,) * 3, bool), predictor.grid, start)
    assert not update.empty
    for o, n, u, m in zip(origin, region.shape, update.origin, update.mask.shape, strict=True):
        assert o <= u and u + m <= o + n
    mask = session.mask(1)
    outside = np.ones(volume.shape, bool)
    outside[tuple(slice(o, o + n) for o, n in zip(origin, region.shape, strict=True))] = False
    assert not mask[outside].any()


def test_clicks_feed_the_previous_mask_and_share_one_embedding(volume):
    session = _session(volume)
    encodes = _count_encodes(session)
    second = (TUMOUR[0] + 3, TUMOUR[1] - 10, TUMOUR[2] + 8)
    session.interact(_click(TUMOUR))
    session.interact(_click(second, positive=False))
    assert encodes[0] == 1
    predictor = session._sam_med3d
    start, inside = predictor.crop([(TUMOUR, True), (second, False)])
    embedding = predictor.embedding(start)
    decode = lambda p, q, m: predictor.network.decode(embedding, p, q, m)  # noqa: E731
    with torch.no_grad():
        first = procedure.decode_step(decode, inside[:1], None, predictor.network.low_res_size, torch.device("cpu"))
        fed = procedure.decode_step(decode, inside, first, predictor.network.low_res_size, torch.device("cpu"))
        unfed = procedure.decode_step(decode, inside, None, predictor.network.low_res_size, torch.device("cpu"))
    assert not torch.allclose(fed, unfed)
    expected_origin, expected = procedure.paste(procedure.crop_mask(fed, 64), predictor.grid, start)
    got = session.mask(1)[tuple(slice(o, o + n) for o, n in zip(expected_origin, expected.shape, strict=True))]
    np.testing.assert_array_equal(got, expected)


def test_undo_restores_the_mask_and_the_click_sequence(volume):
    session = _session(volume)
    second = (TUMOUR[0] - 2, TUMOUR[1] + 6, TUMOUR[2] - 5)
    third = (TUMOUR[0] + 1, TUMOUR[1] + 12, TUMOUR[2] + 3)
    session.interact(_click(TUMOUR))
    after_one = session.mask(1)
    session.interact(_click(second, positive=False))
    session.undo(1)
    np.testing.assert_array_equal(session.mask(1), after_one)
    session.interact(_click(third))
    fresh = _session(volume)
    fresh.interact(_click(TUMOUR))
    fresh.interact(_click(third))
    np.testing.assert_array_equal(session.mask(1), fresh.mask(1))
    session.redo(1)  # nothing to redo after a new click
    np.testing.assert_array_equal(session.mask(1), fresh.mask(1))


def test_a_click_outside_the_crop_moves_it_onto_the_object_clicks(volume):
    session = _session(volume)
    encodes = _count_encodes(session)
    far = (TUMOUR[0], TUMOUR[1] + 80, TUMOUR[2])  # 78 mm away: outside the 96 mm crop
    session.interact(_click(TUMOUR))
    first_start, _ = session._sam_med3d.crop([(TUMOUR, True)])
    session.interact(_click(far))
    start, inside = session._sam_med3d.crop([(TUMOUR, True), (far, True)])
    assert start != first_start and encodes[0] == 2
    low = np.minimum(*(procedure.click_to_canonical(session._sam_med3d.grid, p) for p in (TUMOUR, far)))
    high = np.maximum(*(procedure.click_to_canonical(session._sam_med3d.grid, p) for p in (TUMOUR, far)))
    assert start == procedure.place_crop(low, high, 64)
    assert len(inside) == 2


def test_refused_prompts_leave_no_trace(volume):
    session = _session(volume)
    with pytest.raises(PromptError, match="positive"):
        session.interact(_click(TUMOUR, positive=False))
    assert session.objects == {}
    with pytest.raises(PromptError, match="not boxes"):
        session.interact(Interaction("box", box=((20, 90, 90), (30, 110, 110))))
    with pytest.raises(PromptError, match="coarser spacing"):
        InteractiveSession(_loaded(), volume, device="cpu", max_roi_voxels=1000).interact(_click(TUMOUR))


def test_air_only_crop_is_refused_with_a_reason(volume):
    air = volume.with_array(np.full(volume.shape, -1000.0, dtype=np.float32))
    with pytest.raises(PromptError, match="above 0"):
        InteractiveSession(_loaded(), air, device="cpu").interact(_click(TUMOUR))
