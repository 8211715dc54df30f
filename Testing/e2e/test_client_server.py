"""The module's client drives every route of a real server on real CT, as the Slicer module does."""

from __future__ import annotations

import time

import numpy as np
import pytest
from support.live_server import ThreadedServer


def _paste(mask: np.ndarray, origin: tuple[int, int, int], crop: np.ndarray) -> None:
    """Write a changed-box crop into the full (K, J, I) mask, as the module writes into a segment."""
    if crop.size:
        k, j, i = origin
        mask[k:k + crop.shape[0], j:j + crop.shape[1], i:i + crop.shape[2]] = crop


def test_automatic_segmentation_from_upload_to_labels(live: ThreadedServer, client_module, small_ct) -> None:  # noqa: ANN001
    client = client_module.BackendClient(live.url)
    assert client.health()["api_version"].startswith("1.")
    info = client.info()
    assert info["device"]["type"] == "cpu" and "tiny-stunet" in info["models"]
    kinds = {model["id"]: model["kind"] for model in client.models()}
    assert kinds == {"tiny-click": "promptable", "tiny-stunet": "automatic"}
    image_id = client.upload_image(*small_ct)
    assert client.has_image(image_id)
    seen: list[float] = []
    job_id = client.start_job(image_id, "tiny-stunet", {"step": 1.0, "largest_component": True})
    status = client.wait_for_job(job_id, poll_s=0.1, timeout_s=180, on_progress=lambda s: seen.append(s["progress"]))
    assert status["state"] == "done" and seen == sorted(seen) and seen[-1] == 1.0
    labels, names = client.job_result(job_id)
    assert labels.shape == small_ct[0].shape and names == {1: "liver", 2: "spleen"}

    slow = client.start_job(image_id, "tiny-stunet", {"step": 0.1})
    while client.job(slow)["state"] == "queued":
        time.sleep(0.05)
    assert client.cancel_job(slow)["state"] in ("running", "cancelled")
    assert client.wait_for_job(slow, poll_s=0.05, timeout_s=60)["state"] == "cancelled"
    with pytest.raises(client_module.BackendError, match="409 job .* is cancelled"):
        client.job_result(slow)
    with pytest.raises(client_module.NotFound, match="tiny-stunet"):
        client.start_job(image_id, "no-such-model")
    client.close()


def test_interactive_segmentation_with_undo_redo_and_reseed_after_expiry(live: ThreadedServer, client_module,  # noqa: ANN001
                                                                        small_ct) -> None:  # noqa: ANN001
    client = client_module.BackendClient(live.url)
    image_id = client.upload_image(*small_ct)
    session_id = client.create_session(image_id, "tiny-click")
    mask = np.zeros(small_ct[0].shape, np.uint8)
    history = []
    for interaction in ({"kind": "point", "point": [15, 50, 60], "positive": True},
                        {"kind": "point", "point": [16, 52, 63], "positive": False},
                        {"kind": "box", "box": [[12, 45, 55], [18, 58, 70]]}):
        history.append(mask.copy())
        _paste(mask, *client.interact(session_id, interaction))
    after_box = mask.copy()
    _paste(mask, *client.undo(session_id, 1))
    np.testing.assert_array_equal(mask, history[-1])
    _paste(mask, *client.redo(session_id, 1))
    np.testing.assert_array_equal(mask, after_box)
    assert client.heartbeat(session_id) > 60

    live.services.sessions.liveness_s = 0.1  # let the lease run out
    try:
        time.sleep(0.2)
        with pytest.raises(client_module.SessionExpired, match="re-seed"):
            client.interact(session_id, {"kind": "point", "point": [15, 50, 60]})
    finally:
        live.services.sessions.liveness_s = 120.0
    renewed = client.create_session(image_id, "tiny-click")
    origin, crop = client.interact(renewed, None, mask=mask)
    seeded = np.zeros_like(mask)
    _paste(seeded, origin, crop)
    np.testing.assert_array_equal(seeded, mask)
    _paste(mask, *client.interact(renewed, {"kind": "point", "point": [14, 48, 58]}))
    client.reset_session(renewed)
    client.close_session(renewed)
    with pytest.raises(client_module.NotFound):
        client.heartbeat(renewed)
    client.close()


def test_wrong_token_and_unreachable_server_raise_typed_errors(live: ThreadedServer, client_module) -> None:  # noqa: ANN001
    from support.live_server import free_port

    nobody = client_module.BackendClient(f"http://127.0.0.1:{free_port()}", timeout=(1, 2))
    with pytest.raises(client_module.BackendUnavailable, match="cannot reach the backend"):
        nobody.health()
    with pytest.raises(client_module.NotFound):
        client_module.BackendClient(live.url).job("0" * 32)
    with pytest.raises(client_module.BadRequest, match="image_id"):
        client_module.BackendClient(live.url).start_job("not-hex", "tiny-stunet")


def test_the_client_refuses_a_server_of_another_api_major_version(client_module) -> None:  # noqa: ANN001
    from fastapi import FastAPI

    future = FastAPI()
    future.get("/v1/health")(lambda: {"status": "ok", "api_version": "2.0"})
    with ThreadedServer(future) as server:
        with pytest.raises(client_module.BackendError, match="speaks API 2.0, this module needs 1.x"):
            client_module.BackendClient(server.url).health()
