"""The server's one doorway to the inference engine (whole-volume segmentation and interactive sessions).

The services call inference only through ``Engine``, so scheduling can be tested with a stand-in
engine while the HTTP tests run the real one. The engine modules are imported when first used,
which keeps ``tsfm-backend --help`` fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.server.errors import TooLarge
from tsfm_backend.volume import Volume

Progress = Callable[[float, str], None]
IsCancelled = Callable[[], bool]


@dataclass(frozen=True)
class MaskCrop:
    """A changed region of an object's mask: ``mask`` (uint8 {0,1}, K, J, I) placed at ``origin`` (k, j, i).

    ``image_shape`` is the session image's (K, J, I) shape, filled in by the services (which look it
    up before changing anything, so the answer never needs the image store afterwards).
    """

    object_id: int
    origin: tuple[int, int, int]
    mask: np.ndarray
    image_shape: tuple[int, int, int] | None = None


class InteractiveEngine(Protocol):
    """What the server needs of an interactive session (``inference.interactive.InteractiveSession``)."""

    def check(self, interaction: Any) -> None: ...
    def interact(self, interaction: Any) -> Any: ...
    def undo(self, object_id: int) -> Any: ...
    def redo(self, object_id: int) -> Any: ...
    def reset(self, object_id: int | None = None) -> None: ...
    def set_mask(self, object_id: int, mask: np.ndarray) -> Any: ...
    def mask(self, object_id: int) -> np.ndarray: ...


class Engine:
    """Default engine: ``inference.segmenter.segment_volume`` and ``inference.interactive``."""

    def segment(
        self,
        loaded: LoadedModel,
        volume: Volume,
        options: dict[str, Any],
        device: Any,
        progress: Progress,
        is_cancelled: IsCancelled,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Labels (K, J, I) uint8/uint16 on the volume's grid and their names {label: name}."""
        from tsfm_backend.inference.segmenter import SegmentOptions, segment_volume

        result = segment_volume(
            loaded, volume, SegmentOptions(**options), device=device, progress=progress, is_cancelled=is_cancelled
        )
        return result.labels, dict(result.names)

    def open_session(self, loaded: LoadedModel, volume: Volume, device: Any,
                     modality: str | None = None, max_undo_steps: int | None = None) -> InteractiveEngine:
        """A session on ``volume``; ``modality`` (CT, MR, PET or DICOM's PT) or None to detect it; each
        object keeps at most ``max_undo_steps`` undo steps (None: all)."""
        from tsfm_backend.inference.interactive import InteractiveSession

        return InteractiveSession(loaded, volume, device=device, modality=modality, max_undo_steps=max_undo_steps)

    def interaction(
        self,
        kind: str,
        positive: bool,
        point: tuple[int, int, int] | None,
        box: tuple[tuple[int, int, int], tuple[int, int, int]] | None,
        object_id: int,
    ) -> Any:
        """The engine's prompt object for a point (k, j, i) or an inclusive box of two corners."""
        from tsfm_backend.inference.interactive import Interaction

        return Interaction(kind=kind, positive=positive, point=point, box=box, object_id=object_id)


def check_job_size(loaded: LoadedModel, volume: Volume, options: dict[str, Any], max_windows: int,
                   max_bytes: int) -> None:
    """Refuse a job whose windows or working memory exceed the server's limits, from shapes alone.

    Raises ``errors.TooLarge`` (413) whose message names the option and the setting; nothing is
    allocated, so a step of 1e-300 costs no more to refuse than one of 0.5 costs to accept.
    """
    from tsfm_backend.inference.segmenter import JobTooLarge, SegmentOptions, check_plan, plan_segmentation

    segment_options = SegmentOptions(**options)
    try:
        check_plan(plan_segmentation(loaded.card, volume, segment_options), loaded.card, segment_options,
                   max_windows, max_bytes)
    except JobTooLarge as error:
        raise TooLarge(str(error)) from error


def as_crop(update: Any) -> MaskCrop:
    """Normalise the engine's ``MaskUpdate`` (object_id, origin, mask) into a ``MaskCrop``."""
    mask = np.ascontiguousarray(update.mask, dtype=np.uint8)
    if mask.ndim != 3:
        raise ValueError(f"the interactive engine returned a {mask.ndim}D mask; expected (K, J, I)")
    origin = tuple(int(v) for v in update.origin)
    return MaskCrop(object_id=int(update.object_id), origin=origin, mask=mask)  # type: ignore[arg-type]
