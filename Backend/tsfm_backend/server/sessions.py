"""Interactive sessions held under a lease: capacity, heartbeat, idle expiry and 410 for the expired.

A session lives while both clocks run: *liveness* (reset by any request, heartbeat included, but
not by a status query, ``peek``; a client that vanished stops sending them) and *idle* (reset by
interactions, undo, redo and reset; a forgotten open viewer keeps heartbeating but stops clicking).
When either runs out the session is dropped and its id remembered, so the next request on it
answers 410 Gone and the client knows to create a new session and re-seed it from its current
mask. Expiry is checked on every registry call and by ``sweep``; a session in the middle of a
request never expires.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from tsfm_backend.server.engine import InteractiveEngine
from tsfm_backend.server.errors import Busy, Expired, NotFound

log = logging.getLogger(__name__)
REMEMBERED_EXPIRED = 4096


@dataclass
class Session:
    """One client's interactive state; ``lock`` serialises its requests in arrival order."""

    id: str
    model: str
    image_id: str
    engine: InteractiveEngine
    last_seen: float
    last_active: float
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionRegistry:
    """Sessions by id, at most ``max_sessions`` at once.

    Args:
        max_sessions: capacity; one more raises Busy (503 with Retry-After).
        liveness_s: seconds without any request before a session expires.
        idle_s: seconds without an interaction before a session expires.
        clock: monotonic seconds (injected by tests).
    """

    def __init__(self, max_sessions: int, liveness_s: float, idle_s: float, retry_after_s: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions, self.liveness_s, self.idle_s = max_sessions, liveness_s, idle_s
        self.retry_after_s, self.clock = retry_after_s, clock
        self._sessions: dict[str, Session] = {}
        self._expired: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def ensure_capacity(self) -> None:
        """Raise Busy if no session can be added now (checked again by ``add``)."""
        with self._lock:
            self._sweep_locked()
            self._check_capacity_locked()

    def add(self, model: str, image_id: str, engine: InteractiveEngine) -> Session:
        now = self.clock()
        session = Session(uuid.uuid4().hex, model, image_id, engine, last_seen=now, last_active=now)
        with self._lock:
            self._sweep_locked()
            self._check_capacity_locked()
            self._sessions[session.id] = session
        log.info("session %s opened: model %s on image %s", session.id, model, image_id)
        return session

    def get(self, session_id: str, active: bool) -> Session:
        """The live session, its lease renewed (and its idle clock too when ``active``).

        Raises:
            Expired: the session existed and its lease ran out (410).
            NotFound: no such session was ever made here, or it was closed (404).
        """
        with self._lock:
            session = self._live_locked(session_id)
            now = self.clock()
            session.last_seen = now
            if active:
                session.last_active = now
            return session

    def peek(self, session_id: str) -> Session:
        """The live session, its clocks left as they are: a status query that must not keep it alive.

        Raises:
            Expired, NotFound: as ``get``.
        """
        with self._lock:
            return self._live_locked(session_id)

    def touch(self, session: Session) -> None:
        """Renew the lease after a long request, so time spent waiting for the worker does not count."""
        with self._lock:
            session.last_seen = session.last_active = self.clock()

    def expires_in(self, session: Session) -> float:
        now = self.clock()
        return round(max(0.0, min(session.last_seen + self.liveness_s, session.last_active + self.idle_s) - now), 3)

    def close(self, session_id: str) -> None:
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                if session_id in self._expired:
                    raise Expired(f"session {session_id} had already expired")
                raise NotFound(f"session {session_id} does not exist (or was closed)")
        log.info("session %s closed", session_id)

    def sweep(self) -> list[str]:
        """Drop every expired session now; returns their ids."""
        with self._lock:
            return self._sweep_locked()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _live_locked(self, session_id: str) -> Session:
        self._sweep_locked()
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        reason = self._expired.get(session_id)
        if reason is not None:
            raise Expired(f"session {session_id} expired ({reason}); create a new session and "
                          "re-seed it from your current mask")
        raise NotFound(f"session {session_id} does not exist (or was closed)")

    def _check_capacity_locked(self) -> None:
        if len(self._sessions) >= self.max_sessions:
            raise Busy(f"the server holds its maximum of {self.max_sessions} interactive sessions; "
                       "close one or try again later", self.retry_after_s)

    def _sweep_locked(self) -> list[str]:
        now = self.clock()
        dropped = []
        for session_id, session in list(self._sessions.items()):
            if session.lock.locked():
                continue
            if now - session.last_seen > self.liveness_s:
                reason = f"no request for {self.liveness_s:g} s"
            elif now - session.last_active > self.idle_s:
                reason = f"no interaction for {self.idle_s:g} s"
            else:
                continue
            del self._sessions[session_id]
            self._expired[session_id] = reason
            dropped.append(session_id)
            log.info("session %s expired: %s", session_id, reason)
        while len(self._expired) > REMEMBERED_EXPIRED:
            self._expired.popitem(last=False)
        return dropped
