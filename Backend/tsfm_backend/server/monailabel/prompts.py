"""The ``params`` of ``POST /infer/{model}``: clicks and ROI of a deepgrow request, options of an automatic one.

MONAI Label is stateless: every click request carries all the clicks of one segment, as voxel
indices ``[i, j, k]`` of the uploaded image (the plugin maps each RAS point through the volume's
RAS-to-IJK matrix and rounds), ``foreground`` and ``background`` each in the order they were placed,
plus an optional ``roi`` ``[i0, i1, j0, j1, k0, k1]`` (the plugin's ROI node, corners in either
order). Here they become our prompts in (k, j, i) order, and ``plan`` says which of them a session
that already applied earlier clicks still has to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tsfm_backend.server.errors import BadInput, Invalid
from tsfm_backend.server.schemas import JobOptions
from tsfm_backend.server.services import describe_validation

Voxel = tuple[int, int, int]
# Clicks one request may carry: a request the cache cannot continue replays them all, one network
# pass each (more while a region grows), so this bounds the work of a single request.
MAX_CLICKS = 128
MAX_LABEL_CHARS = 256


@dataclass(frozen=True)
class Prompt:
    """One prompt for the interactive engine: a point (k, j, i) or an inclusive box of two corners."""

    kind: str
    positive: bool
    point: Voxel | None = None
    box: tuple[Voxel, Voxel] | None = None


@dataclass(frozen=True)
class ClickPrompts:
    """Everything one deepgrow request asks for on one segment, in (k, j, i) voxels."""

    label: str
    foreground: tuple[Voxel, ...]
    background: tuple[Voxel, ...]
    box: tuple[Voxel, Voxel] | None
    reset: bool = False

    def sequence(self) -> list[Prompt]:
        """The order a session replays them from scratch: the ROI box, foreground clicks, background clicks."""
        prompts = [Prompt("box", True, box=self.box)] if self.box is not None else []
        prompts += [Prompt("point", True, point=point) for point in self.foreground]
        return prompts + [Prompt("point", False, point=point) for point in self.background]

    def continues(self, applied: ClickPrompts) -> bool:
        """True when this request is ``applied`` plus clicks appended to either list (same ROI)."""
        return (self.box == applied.box
                and self.foreground[:len(applied.foreground)] == applied.foreground
                and self.background[:len(applied.background)] == applied.background)


def plan(applied: ClickPrompts | None, wanted: ClickPrompts) -> tuple[bool, list[Prompt]]:
    """``(start over, prompts to run)`` to bring a session that ran ``applied`` (None: nothing known) to
    ``wanted``: only the appended clicks when ``wanted`` continues ``applied``, else all of them."""
    if applied is None or wanted.reset or not wanted.continues(applied):
        return True, wanted.sequence()
    new_foreground = wanted.foreground[len(applied.foreground):]
    new_background = wanted.background[len(applied.background):]
    return False, ([Prompt("point", True, point=point) for point in new_foreground]
                   + [Prompt("point", False, point=point) for point in new_background])


def click_prompts(params: dict[str, Any], shape: Voxel) -> ClickPrompts:
    """The deepgrow ``params`` of a request on an image of ``shape`` (K, J, I); BadInput names what is wrong."""
    label = params.get("label")
    if not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL_CHARS:
        raise BadInput(f"params.label must be the segment's name (1 to {MAX_LABEL_CHARS} characters)")
    foreground = _points(params.get("foreground"), "foreground", shape)
    background = _points(params.get("background"), "background", shape)
    if len(foreground) + len(background) > MAX_CLICKS:
        raise BadInput(f"{len(foreground) + len(background)} points in one request; this server takes at most "
                       f"{MAX_CLICKS} per segment")
    box = _roi(params.get("roi"), shape)
    if not foreground and not background and box is None:
        raise BadInput("no foreground or background point and no ROI: place a point on the structure first")
    reset = params.get("reset_state", False)
    if not isinstance(reset, bool):
        raise BadInput("params.reset_state must be true or false")
    return ClickPrompts(label, foreground, background, box, reset)


def job_options(params: dict[str, Any]) -> JobOptions:
    """The automatic job's options among ``params`` (those of ``JobOptions``; MONAI Label's own keys such
    as ``result_extension`` or ``client_id`` are not options and are left out)."""
    options = {key: value for key, value in params.items() if key in JobOptions.model_fields}
    try:
        return JobOptions.model_validate(options)
    except ValidationError as error:
        raise Invalid(f"params: {describe_validation(error.errors())}") from error


def _points(value: Any, name: str, shape: Voxel) -> tuple[Voxel, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadInput(f"params.{name} must be a list of [i, j, k] voxel indices")
    return tuple(_voxel(point, f"params.{name}[{n}]", shape) for n, point in enumerate(value[:MAX_CLICKS + 1]))


def _voxel(point: Any, where: str, shape: Voxel) -> Voxel:
    if not (isinstance(point, list) and len(point) == 3 and all(_is_index(c) for c in point)):
        raise BadInput(f"{where} must be [i, j, k]: three integer voxel indices, got {str(point)[:80]}")
    i, j, k = (int(c) for c in point)
    if not (0 <= k < shape[0] and 0 <= j < shape[1] and 0 <= i < shape[2]):
        raise BadInput(f"{where} = [{i}, {j}, {k}] is outside the image of size [I, J, K] = "
                       f"[{shape[2]}, {shape[1]}, {shape[0]}]")
    return k, j, i


def _roi(value: Any, shape: Voxel) -> tuple[Voxel, Voxel] | None:
    if value is None or value == []:
        return None
    if not (isinstance(value, list) and len(value) == 6 and all(_is_index(c) for c in value)):
        raise BadInput("params.roi must be [i0, i1, j0, j1, k0, k1]: six integer voxel indices")
    i0, i1, j0, j1, k0, k1 = (int(c) for c in value)
    low = (min(k0, k1), min(j0, j1), min(i0, i1))
    high = (max(k0, k1), max(j0, j1), max(i0, i1))
    if any(h < 0 or lo >= n for lo, h, n in zip(low, high, shape, strict=True)):
        raise BadInput(f"params.roi {value} lies outside the image of size [I, J, K] = "
                       f"[{shape[2]}, {shape[1]}, {shape[0]}]")
    clip = lambda corner: tuple(min(max(c, 0), n - 1) for c, n in zip(corner, shape, strict=True))  # noqa: E731
    return clip(low), clip(high)  # type: ignore[return-value]


def _is_index(value: Any) -> bool:
    """An integer (or a float holding one) below 2^31 in size, not a bool: JSON numbers the plugin rounded."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not value.is_integer():
        return False
    return -(1 << 31) <= value < (1 << 31)
