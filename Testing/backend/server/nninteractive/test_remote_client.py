"""nnInteractive's own remote client (``nninteractive-client`` from PyPI) drives our server through whole sessions.

Every mask the client ends up with is compared, voxel for voxel, with our engine run in this process
on the same prompts (points and boxes as they are; scribbles, lassos and negative boxes through
``inference.prompt_conversion``, exactly the engine prompts the server must run).
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from nnInteractive.inference.remote import (
    ServerAtCapacityError,
    SessionExpiredError,
    nnInteractiveRemoteInferenceSession,
)
from support.live_server import TEST_TOKEN
from tsfm_backend.inference import prompt_conversion as conversion
from tsfm_backend.inference.interactive import Interaction, PromptError

OBJECT = 1


def start(remote, sarcoma_ct) -> np.ndarray:  # noqa: ANN001 - the client session and the CT fixture
    """Image and target buffer as SlicerNNInteractive sends them; returns the buffer."""
    array, spacing_kji = sarcoma_ct
    remote.set_image(array[None], {"spacing": list(spacing_kji)})
    buffer = np.zeros(array.shape, dtype=np.uint8)
    remote.set_target_buffer(buffer)
    return buffer


def current(reference) -> np.ndarray:  # noqa: ANN001
    try:
        return reference.mask(OBJECT)
    except PromptError:
        return np.zeros(reference.shape, dtype=np.uint8)


def apply(reference, converted: conversion.ConvertedPrompt) -> None:  # noqa: ANN001 - an InteractiveSession
    """The engine prompts of one converted viewer prompt, in the order the server runs them."""
    if converted.box is not None:
        reference.interact(Interaction("box", True, box=converted.box))
    for point in converted.positive:
        reference.interact(Interaction("point", True, point=point))
    for point in converted.negative:
        reference.interact(Interaction("point", False, point=point))


def region(mask: np.ndarray, low: tuple[int, ...], high: tuple[int, ...]) -> np.ndarray:
    return mask[tuple(slice(lo, hi + 1) for lo, hi in zip(low, high, strict=True))]


def test_capabilities_announce_every_prompt_and_the_models_license(remote) -> None:  # noqa: ANN001
    assert remote.ping()
    assert remote.supported_interactions == {"points": True, "bbox2d": True, "bbox3d": True, "scribble": True,
                                             "lasso": True}
    assert remote.supports_undo and remote.supports_initial_label
    assert remote.license == "Apache-2.0"
    assert remote.INFERENCE_SESSION_VERSION.startswith("tsfm-backend")
    assert remote.liveness_timeout_seconds == 120.0 and remote.idle_timeout_seconds == 1800.0


def test_whole_session_matches_the_engine_in_process(remote, reference, sarcoma_ct) -> None:  # noqa: ANN001
    buffer = start(remote, sarcoma_ct)
    assert remote.original_image_shape == (1, *sarcoma_ct[0].shape)
    spacing = sarcoma_ct[1]
    steps = []

    # A positive click at (k, j, i), as the plugin sends it (its IJK reversed).
    remote.add_point_interaction([37, 99, 96], include_interaction=True)
    reference.interact(Interaction("point", True, point=(37, 99, 96)))
    steps.append(buffer.copy())
    assert buffer.any(), "the first click must give a mask, or the comparison says little"
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))

    # A negative click.
    remote.add_point_interaction([37, 101, 98], include_interaction=False)
    reference.interact(Interaction("point", False, point=(37, 101, 98)))
    steps.append(buffer.copy())
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))

    # A 2D box drawn on slice 40 (half-open, one voxel thick along k) and a 3D box.
    remote.add_bbox_interaction([[40, 41], [90, 110], [85, 105]], include_interaction=True)
    reference.interact(Interaction("box", True, box=((40, 90, 85), (40, 109, 104))))
    steps.append(buffer.copy())
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))
    remote.add_bbox_interaction([[30, 36], [95, 104], [90, 99]], include_interaction=True)
    reference.interact(Interaction("box", True, box=((30, 95, 90), (35, 103, 98))))
    steps.append(buffer.copy())
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))

    # A negative box: negative clicks deep inside the part of the mask it holds.
    low, high = (36, 92, 88), (39, 106, 102)
    expected = conversion.box_prompt((low, high), False, spacing, region(current(reference), low, high))
    assert expected.negative, "the negative box must cover part of the mask"
    remote.add_bbox_interaction([[36, 40], [92, 107], [88, 103]], include_interaction=False)
    apply(reference, expected)
    steps.append(buffer.copy())
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))

    # A positive scribble on slice 45, sent as a crop with its interaction_bbox.
    stroke = np.zeros((1, 3, 40), dtype=np.uint8)
    stroke[0, 1, :] = 1
    origin = (45, 120, 70)
    expected = conversion.scribble_prompt(stroke.astype(bool), origin, spacing, True,
                                          region(current(reference), origin, (45, 122, 109)))
    assert len(expected.positive) > 1
    remote.add_scribble_interaction(stroke, include_interaction=True,
                                    interaction_bbox=[[45, 46], [120, 123], [70, 110]])
    apply(reference, expected)
    steps.append(buffer.copy())
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))

    # A lasso filled on slice 50, sent as the whole volume (interaction_bbox None).
    lasso = np.zeros(buffer.shape, dtype=np.uint8)
    jj, ii = np.ogrid[:buffer.shape[1], :buffer.shape[2]]
    lasso[50] = ((jj - 60) ** 2 + (ii - 60) ** 2) <= 12 ** 2
    low, high = conversion.bounding_box(lasso > 0, (0, 0, 0))
    expected = conversion.lasso_prompt(region(lasso, low, high) > 0, low, spacing, True,
                                       region(current(reference), low, high))
    assert expected.box == ((50, 48, 48), (50, 72, 72)) and expected.positive
    remote.add_lasso_interaction(lasso, include_interaction=True)
    apply(reference, expected)
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))

    # Undo takes back whole viewer prompts, however many engine steps each made.
    for before in reversed(steps[-3:]):
        assert remote.undo()
        np.testing.assert_array_equal(buffer, before)
        assert remote._last_paste_bbox is not None

    # Reset: the server forgets the object and the client's buffer is zero.
    remote.reset_interactions()
    assert not buffer.any() and not remote.undo()
    remote.add_point_interaction([37, 99, 96], include_interaction=True)
    np.testing.assert_array_equal(buffer, steps[0])


def test_initial_segmentation_then_prompts_refine_it(remote, reference, sarcoma_ct) -> None:  # noqa: ANN001
    buffer = start(remote, sarcoma_ct)
    seed = np.zeros(buffer.shape, dtype=np.uint8)
    seed[35:40, 95:105, 90:100] = 1
    remote.add_initial_seg_interaction(seed, run_prediction=False)
    np.testing.assert_array_equal(buffer, seed)
    reference.set_mask(OBJECT, seed)
    remote.add_point_interaction([37, 110, 110], include_interaction=True)
    reference.interact(Interaction("point", True, point=(37, 110, 110)))
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))
    assert remote.undo()
    np.testing.assert_array_equal(buffer, seed)


def test_prompts_deferred_to_predict_run_in_order(remote, reference, sarcoma_ct) -> None:  # noqa: ANN001
    buffer = start(remote, sarcoma_ct)
    assert remote.add_point_interaction([37, 99, 96], include_interaction=True, run_prediction=False) is None
    remote.add_bbox_interaction([[40, 41], [90, 110], [85, 105]], include_interaction=True, run_prediction=False)
    assert not buffer.any()
    assert remote._predict() is not None
    reference.interact(Interaction("point", True, point=(37, 99, 96)))
    reference.interact(Interaction("box", True, box=((40, 90, 85), (40, 109, 104))))
    np.testing.assert_array_equal(buffer, reference.mask(OBJECT))
    assert remote._predict() is None  # nothing queued any more


def test_refused_prompts_reach_the_user_with_a_reason(remote, sarcoma_ct) -> None:  # noqa: ANN001
    with pytest.raises(httpx.HTTPStatusError) as refused:
        remote.add_point_interaction([1, 2, 3], include_interaction=True)
    assert refused.value.response.status_code == 400
    assert "set_image" in refused.value.response.json()["detail"]
    buffer = start(remote, sarcoma_ct)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        remote.add_point_interaction([500, 2, 3], include_interaction=True)
    assert refused.value.response.status_code == 400 and "outside the image" in refused.value.response.json()["detail"]
    with pytest.raises(httpx.HTTPStatusError) as refused:
        remote.add_bbox_interaction([[3, 3], [0, 10], [0, 10]], include_interaction=True)
    assert "zero" in refused.value.response.json()["detail"]
    assert not buffer.any() and not remote.undo()


def test_wrong_or_missing_key_is_refused_before_a_lease(live) -> None:  # noqa: ANN001
    for key in ("not-the-token", None):
        with pytest.raises(httpx.HTTPStatusError) as refused:
            nnInteractiveRemoteInferenceSession(live.url_nni, api_key=key)
        assert refused.value.response.status_code == 401
    assert len(live.services.sessions) == 0


def test_server_at_capacity_then_a_freed_slot(live) -> None:  # noqa: ANN001
    held = [nnInteractiveRemoteInferenceSession(live.url_nni, api_key=TEST_TOKEN) for _ in range(live.services.settings.max_sessions)]
    try:
        with pytest.raises(ServerAtCapacityError, match="maximum of 2 interactive sessions"):
            nnInteractiveRemoteInferenceSession(live.url_nni, api_key=TEST_TOKEN)
        held.pop().close()
        held.append(nnInteractiveRemoteInferenceSession(live.url_nni, api_key=TEST_TOKEN))
    finally:
        for session in held:
            session.close()
    assert len(live.services.sessions) == 0


def test_an_expired_lease_raises_session_expired(live, remote, sarcoma_ct) -> None:  # noqa: ANN001
    start(remote, sarcoma_ct)
    assert remote.heartbeat() == pytest.approx(1800.0)
    live.clock.now += live.services.settings.session_liveness_s + 1
    with pytest.raises(SessionExpiredError, match="expired"):
        remote.add_point_interaction([37, 99, 96], include_interaction=True)
    with pytest.raises(SessionExpiredError):
        remote.lease_status()
