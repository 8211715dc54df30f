"""Interactive sessions kept between MONAI Label's stateless click requests, so only the new click runs.

Each deepgrow request resends every click of its segment. Running them all again would cost one
network pass per click, more with every click the user places. The cache keeps one interactive
session per (image id, model, segment label) with the prompts it has applied; a request that only
appends clicks runs just those (``prompts.plan``), and any other request (a click moved or deleted,
another ROI, ``reset_state``) replays the whole list from scratch on the same session. The answer is
therefore the same whether or not the cache held the session: the mask the clicks make in
``ClickPrompts.sequence`` order, where an appended click comes after all earlier ones.

Sessions are opened and run on the model worker (``run_on_worker``). At most ``max_entries`` are held
(least recently used dropped first; dropping one only costs its next request a replay), and one
unused for ``idle_s`` is dropped. Requests on one key run one after another.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from tsfm_backend.server.engine import InteractiveEngine
from tsfm_backend.server.monailabel.prompts import ClickPrompts, Prompt, plan

T = TypeVar("T")
OBJECT_ID = 1  # one segment per key: its label is part of the key


@dataclass
class _Entry:
    last_used: float
    engine: InteractiveEngine | None = None
    applied: ClickPrompts | None = None  # None: nothing applied, or a replay that failed half-way
    lock: threading.Lock = field(default_factory=threading.Lock)


class ClickCache:
    """Interactive sessions by key, each with the prompts it has applied.

    Args:
        max_entries: sessions held at once.
        idle_s: seconds after its last request that a session is dropped.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(self, max_entries: int, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.idle_s, self.clock = max_entries, idle_s, clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def mask(
        self,
        key: Hashable,
        wanted: ClickPrompts,
        open_engine: Callable[[], InteractiveEngine],
        interaction: Callable[[Prompt], Any],
        run_on_worker: Callable[[Callable[[], T]], T],
    ) -> np.ndarray:
        """The (K, J, I) uint8 {0, 1} mask that ``wanted`` makes, running only what the held session lacks.

        Args:
            key: (image id, model, label) of the segment.
            open_engine: a new interactive session on the image (called on the worker).
            interaction: the engine's prompt object for a ``Prompt``.
            run_on_worker: runs a function on the model worker and returns its result (or raises its error).
        """
        entry = self._entry(key)
        with entry.lock:
            if entry.engine is None:
                entry.engine = run_on_worker(open_engine)
            engine = entry.engine
            start_over, prompts = plan(entry.applied, wanted)
            entry.applied = None  # until every prompt ran: a failure half-way leaves the session unknown

            def apply() -> np.ndarray:
                if start_over:
                    engine.reset(None)
                for prompt in prompts:
                    engine.interact(interaction(prompt))
                return engine.mask(OBJECT_ID)

            mask = run_on_worker(apply)
            entry.applied = wanted
            entry.last_used = self.clock()
            return mask

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _entry(self, key: Hashable) -> _Entry:
        now = self.clock()
        with self._lock:
            for stale in [k for k, e in self._entries.items() if now - e.last_used > self.idle_s]:
                del self._entries[stale]
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(last_used=now)
            entry.last_used = now
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return entry
