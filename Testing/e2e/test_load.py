"""Load: 8 clients x 25 interactions at once on one server; every answer is the client's own, and correct.

Each client has its own session and prompt sequence (points, negative points, boxes, undo). The
reference is the same sequence replayed in-process on a fresh ``InteractiveSession`` of the same
model: every changed box and every final mask must match exactly, so a mixed-up session, a lost
update or an out-of-order answer fails.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support.live_server import ThreadedServer

CLIENTS = 8
INTERACTIONS = 25
pytestmark = pytest.mark.slow


def _script(seed: int, shape: tuple[int, int, int]) -> list[dict]:
    """A reproducible prompt sequence of one client; ``{"undo": 1}`` marks an undo."""
    rng = np.random.default_rng(seed)
    steps: list[dict] = []
    for n in range(INTERACTIONS):
        if n % 6 == 5:
            steps.append({"undo": 1})
        elif n % 4 == 3:
            low = [int(rng.integers(0, s // 2)) for s in shape]
            high = [int(rng.integers(lo + 1, s)) for lo, s in zip(low, shape, strict=True)]
            steps.append({"kind": "box", "box": [low, high], "positive": True})
        else:
            point = [int(rng.integers(0, s)) for s in shape]
            steps.append({"kind": "point", "point": point, "positive": bool(n % 3 != 2)})
    return steps


def _paste(mask: np.ndarray, origin: tuple[int, int, int], crop: np.ndarray) -> None:
    if crop.size:
        k, j, i = origin
        mask[k:k + crop.shape[0], j:j + crop.shape[1], i:i + crop.shape[2]] = crop


def _reference(model_path: Path, volume, script: list[dict]) -> list[tuple[tuple[int, int, int], np.ndarray]]:  # noqa: ANN001
    from tsfm_backend.checkpoints import load_model
    from tsfm_backend.inference.interactive import Interaction, InteractiveSession

    session = InteractiveSession(load_model(str(model_path)), volume)
    answers = []
    for step in script:
        if "undo" in step:
            update = session.undo(step["undo"])
        else:
            box = tuple(tuple(corner) for corner in step["box"]) if "box" in step else None
            point = tuple(step["point"]) if "point" in step else None
            update = session.interact(Interaction(step["kind"], step["positive"], point, box, 1))
        answers.append((tuple(int(v) for v in update.origin), np.asarray(update.mask, np.uint8)))
    return answers


def test_eight_concurrent_clients_get_their_own_correct_results(live: ThreadedServer, client_module, small_ct,  # noqa: ANN001
                                                                model_paths) -> None:  # noqa: ANN001
    from tsfm_backend.volume import Volume

    # A block of the real CT exactly one model patch (8 x 16 x 16) in size: every click then runs the network
    # on the same shape, so the time goes to the server under test rather than to compiling new conv shapes.
    array = np.ascontiguousarray(small_ct[0][11:19, 50:66, 60:76])
    geometry = small_ct[1:]
    image_id = client_module.BackendClient(live.url).upload_image(array, *geometry)
    scripts = [_script(seed, array.shape) for seed in range(CLIENTS)]
    answers: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(CLIENTS)

    def run(index: int) -> None:
        client = client_module.BackendClient(live.url)
        try:
            session_id = client.create_session(image_id, "tiny-click")
            start.wait(30)
            mine = []
            for step in scripts[index]:
                if "undo" in step:
                    mine.append(client.undo(session_id, step["undo"]))
                else:
                    mine.append(client.interact(session_id, step))
            answers[index] = mine
            client.close_session(session_id)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            client.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=run, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    elapsed = time.perf_counter() - began
    assert not errors, errors[:3]
    assert sorted(answers) == list(range(CLIENTS))
    print(f"{CLIENTS * INTERACTIONS} interactions from {CLIENTS} clients in {elapsed:.1f} s "
          f"({CLIENTS * INTERACTIONS / elapsed:.1f}/s)")

    volume = Volume(array, *geometry)
    for index in range(CLIENTS):
        expected = _reference(model_paths["tiny-click"], volume, scripts[index])
        served, reference = np.zeros(array.shape, np.uint8), np.zeros(array.shape, np.uint8)
        for step, ((origin, crop), (want_origin, want_crop)) in enumerate(zip(answers[index], expected, strict=True)):
            assert origin == want_origin and crop.shape == want_crop.shape, (index, step)
            np.testing.assert_array_equal(crop, want_crop, err_msg=f"client {index}, step {step}")
            _paste(served, origin, crop)
            _paste(reference, want_origin, want_crop)
        np.testing.assert_array_equal(served, reference)
    assert len(live.services.sessions) == 0
