"""A process kill simulated in-process: every file operation is counted and the n-th one ends the "process".

From the ``kill_at``-th operation on (1-based) each raises ``Killed``, a BaseException so that no
``except Exception`` swallows it and no clean-up runs after it (a killed process runs no ``finally``).
``armed`` patches the ``os`` file operations and one writer of the code under test (``target.name``),
which leaves a half-written file behind when the kill falls on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FILE_OPERATIONS = ("replace", "rename", "unlink", "remove", "rmdir", "mkdir")


class Killed(BaseException):
    """The simulated end of the process."""


class KillSwitch:
    """Counts file operations; from the ``kill_at``-th on (1-based), each raises ``Killed``."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at, self.count, self.dead, self.log = kill_at, 0, False, []

    def step(self, what: str) -> None:
        if self.dead:
            raise Killed(f"already killed; {what} never happens")
        self.count += 1
        self.log.append(what)
        if self.kill_at is not None and self.count >= self.kill_at:
            self.dead = True
            raise Killed(f"killed at operation {self.count}: {what}")

    @contextlib.contextmanager
    def armed(self, target: Any, writer: str, path_argument: int, half_written: bytes) -> Iterator[KillSwitch]:
        """Count ``os`` file operations and calls of ``target.writer`` (whose positional argument
        ``path_argument`` is the file it writes; a kill there leaves ``half_written`` in it)."""
        with pytest.MonkeyPatch.context() as patch:
            for name in FILE_OPERATIONS:
                original = getattr(os, name)

                def operation(*args, _original=original, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
                    self.step(f"os.{_name}({', '.join(str(a) for a in args)})")
                    return _original(*args, **kwargs)

                patch.setattr(os, name, operation)
            write = getattr(target, writer)

            def guarded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                path = args[path_argument]
                try:
                    self.step(f"write {path}")
                except Killed:
                    if self.count == self.kill_at:
                        Path(path).write_bytes(half_written)
                    raise
                return write(*args, **kwargs)

            patch.setattr(target, writer, guarded)
            yield self
