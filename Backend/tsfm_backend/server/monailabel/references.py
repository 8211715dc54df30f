"""What MONAI Label's image references point to: datastore names and upload sessions, both to image ids.

The plugin names an image twice over: ``PUT /datastore/?image=<name>`` stores a volume under the name
of its Slicer node, and ``PUT /session/`` stores one under a session id the server makes; inference
then asks for ``image=<name>`` with an optional ``session_id``. Both resolve here to the content id
of the volume in the server's ``ImageStore``, which holds the voxels (and may evict them: a
reference whose image is gone answers 404, and the plugin uploads again). Both tables are bounded
and forget their least recently used entries first.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tsfm_backend.server.errors import NotFound

MAX_NAMES = 4096
MAX_SESSIONS = 1024
DEFAULT_SESSION_EXPIRY_S = 3600  # MONAI Label's own default
MAX_SESSION_EXPIRY_S = 24 * 3600


class ImageNames:
    """Datastore names -> image ids; a name uploaded again points to its newest volume."""

    def __init__(self, max_names: int = MAX_NAMES) -> None:
        self.max_names = max_names
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, name: str, image_id: str) -> None:
        with self._lock:
            self._ids[name] = image_id
            self._ids.move_to_end(name)
            while len(self._ids) > self.max_names:
                self._ids.popitem(last=False)

    def get(self, name: str) -> str:
        """The image id stored under ``name``; NotFound tells the client to upload it."""
        with self._lock:
            image_id = self._ids.get(name)
            if image_id is None:
                raise NotFound(f"image {name!r} is not on this server: upload it first (PUT /datastore/?image=...)")
            self._ids.move_to_end(name)
            return image_id


@dataclass
class UploadSession:
    """A MONAI Label session: one uploaded image, alive until ``expiry_s`` after its last use."""

    id: str
    image_id: str
    created: float
    last_access: float
    expiry_s: int

    def to_json(self) -> dict[str, Any]:
        """The ``session_info`` fields MONAI Label answers with (``image`` is our image id, not a path)."""
        return {"name": self.id, "path": "", "image": self.image_id, "meta": {}, "create_ts": int(self.created),
                "last_access_ts": int(self.last_access), "expiry": self.expiry_s}


class UploadSessions:
    """Upload sessions by id, at most ``max_sessions`` (least recently used dropped), expiring when idle.

    Args:
        clock: wall-clock seconds (MONAI Label reports Unix timestamps); injected by tests.
    """

    def __init__(self, max_sessions: int = MAX_SESSIONS, clock: Callable[[], float] = time.time) -> None:
        self.max_sessions, self.clock = max_sessions, clock
        self._sessions: OrderedDict[str, UploadSession] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, image_id: str, expiry_s: int) -> UploadSession:
        """A new session on ``image_id`` that lives ``expiry_s`` seconds after its last use (0: the default)."""
        expiry_s = min(expiry_s, MAX_SESSION_EXPIRY_S) if expiry_s > 0 else DEFAULT_SESSION_EXPIRY_S
        now = self.clock()
        session = UploadSession(uuid.uuid4().hex, image_id, created=now, last_access=now, expiry_s=expiry_s)
        with self._lock:
            self._drop_expired_locked(now)
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str, touch: bool = True) -> UploadSession:
        """The live session (its clock restarted when ``touch``); NotFound (404) when unknown or expired."""
        now = self.clock()
        with self._lock:
            self._drop_expired_locked(now)
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFound(f"Session ({session_id}) Not Found: it expired or was removed; upload the image again")
            if touch:
                session.last_access = now
                self._sessions.move_to_end(session_id)
            return session

    def remove(self, session_id: str) -> UploadSession:
        session = self.get(session_id, touch=False)
        with self._lock:
            self._sessions.pop(session_id, None)
        return session

    def _drop_expired_locked(self, now: float) -> None:
        for session_id, session in list(self._sessions.items()):
            if now - session.last_access > session.expiry_s:
                del self._sessions[session_id]
