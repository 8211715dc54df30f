"""Which preset of a family a released checkpoint is: the one whose keys and shapes it has exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tsfm_backend.formats.errors import CheckpointError

SHOWN_DIFFERENCES = 6


def match_preset(presets: Iterable[str], differences: Callable[[str], list[str]], family: str) -> str:
    """The first preset for which ``differences(preset)`` is empty; else CheckpointError naming the closest
    preset and its first differences (``family`` names the checkpoint's kind in the message)."""
    report = {name: differences(name) for name in presets}
    for name, lines in report.items():
        if not lines:
            return name
    closest = min(report, key=lambda name: len(report[name]))
    lines = report[closest]
    more = f" (+{len(lines) - SHOWN_DIFFERENCES} more)" if len(lines) > SHOWN_DIFFERENCES else ""
    raise CheckpointError(f"{family} checkpoint fits no known architecture; against {closest!r}: "
                          + "; ".join(lines[:SHOWN_DIFFERENCES]) + more)
