"""The click cache on a stand-in engine: which prompts reach the engine, eviction, idle expiry, failures."""

from __future__ import annotations

import numpy as np
import pytest
from tsfm_backend.server.monailabel.prompts import ClickPrompts, Prompt
from tsfm_backend.server.monailabel.replay import ClickCache


class RecordingEngine:
    """Records prompts; the mask counts positive points minus negative ones at voxel (0, 0, 0)."""

    def __init__(self, log: list) -> None:
        self.log, self.value = log, 0

    def reset(self, object_id: int | None = None) -> None:
        self.log.append("reset")
        self.value = 0

    def interact(self, prompt: Prompt) -> None:
        if prompt.point == (9, 9, 9):
            raise ValueError("click (k, j, i) = (9, 9, 9) is outside the image")
        self.log.append(prompt.point)
        self.value += 1 if prompt.positive else -1

    def mask(self, object_id: int) -> np.ndarray:
        return np.full((1, 1, 1), self.value, dtype=np.int8)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run(cache: ClickCache, key: str, foreground: list, log: list, opened: list) -> int:
    def open_engine() -> RecordingEngine:
        opened.append(key)
        return RecordingEngine(log)

    wanted = ClickPrompts("t", tuple(foreground), (), None)
    return int(cache.mask(key, wanted, open_engine, lambda prompt: prompt, lambda task: task())[0, 0, 0])


def test_only_new_clicks_reach_a_held_session_and_other_lists_replay() -> None:
    log, opened = [], []
    cache = ClickCache(max_entries=2, idle_s=60.0, clock=Clock())
    assert _run(cache, "a", [(1, 1, 1)], log, opened) == 1
    assert _run(cache, "a", [(1, 1, 1), (2, 2, 2)], log, opened) == 2
    assert log == ["reset", (1, 1, 1), (2, 2, 2)] and opened == ["a"]
    log.clear()
    assert _run(cache, "a", [(2, 2, 2)], log, opened) == 1  # the first click was deleted: replay
    assert log == ["reset", (2, 2, 2)] and opened == ["a"]


def test_least_recently_used_and_idle_sessions_are_dropped() -> None:
    log, opened, clock = [], [], Clock()
    cache = ClickCache(max_entries=2, idle_s=60.0, clock=clock)
    for key in ("a", "b", "c"):
        _run(cache, key, [(1, 1, 1)], log, opened)
    assert len(cache) == 2
    _run(cache, "a", [(1, 1, 1)], log, opened)  # "a" was dropped for "c": opened again
    assert opened == ["a", "b", "c", "a"]
    clock.now = 61.0
    _run(cache, "c", [(1, 1, 1), (2, 2, 2)], log, opened)
    assert opened[-1] == "c" and len(cache) == 1


def test_a_failure_half_way_leaves_the_next_request_to_replay() -> None:
    log, opened = [], []
    cache = ClickCache(max_entries=2, idle_s=60.0, clock=Clock())
    _run(cache, "a", [(1, 1, 1)], log, opened)
    with pytest.raises(ValueError, match="outside"):
        _run(cache, "a", [(1, 1, 1), (9, 9, 9)], log, opened)
    log.clear()
    assert _run(cache, "a", [(1, 1, 1), (2, 2, 2)], log, opened) == 2
    assert log == ["reset", (1, 1, 1), (2, 2, 2)]
