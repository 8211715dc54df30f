"""What the server's background tasks (jobs, model downloads) share: their run time from start and end."""

from __future__ import annotations


class Timed:
    """A task with ``started`` / ``finished`` (``time.monotonic()`` seconds, None until they happen)."""

    started: float | None
    finished: float | None

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return round(self.finished - self.started, 3)
