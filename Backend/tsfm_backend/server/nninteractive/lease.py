"""One nnInteractive lease on top of our interactive session: its image, queued prompts and undo log.

A lease is one of our sessions (``server.sessions``: capacity, liveness and idle expiry, 410 once
gone) whose engine is a ``LeaseEngine``. nnInteractive claims the lease before it sends an image,
so the engine starts empty and ``set_image`` gives it an ``InteractiveSession``; the lease
segments one object (``OBJECT_ID``), as nnInteractive's target buffer holds one.

Every viewer prompt (a point, a box, a scribble, a lasso) is queued as a ``PendingPrompt``; it is
converted into engine prompts (``inference.prompt_conversion``) only when it runs, against the mask
as it is then, and each run records how many engine steps it made. ``undo`` therefore takes back
exactly the last viewer prompt (``undo_last_prompt``): several engine steps, or none when that prompt changed nothing
(the engine keeps no step for a prompt without effect). All methods run under the session's lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tsfm_backend.inference.prompt_conversion import ConvertedPrompt
from tsfm_backend.server.engine import InteractiveEngine

Voxel = tuple[int, int, int]
OBJECT_ID = 1


@dataclass(frozen=True)
class PendingPrompt:
    """A viewer prompt waiting to run: its region of the image and how to convert it.

    ``convert`` gets the object's mask over the region ((K, J, I) at ``origin``, or None while the
    object has no mask) and returns the engine prompts.
    """

    origin: Voxel
    shape: Voxel
    convert: Callable[[np.ndarray | None], ConvertedPrompt]


@dataclass(frozen=True)
class Change:
    """A prediction answer: whether something ran, and the object's new mask over the changed box.

    ``mask`` (uint8, K, J, I) placed at ``origin``; both None when no voxel changed.
    """

    ran: bool
    origin: Voxel | None = None
    mask: np.ndarray | None = None


class NoImage(ValueError):
    """A request that needs the lease's image before ``set_image`` was called."""


class LeaseEngine:
    """The state of one lease; the ``InteractiveEngine`` methods forward to the session once it has an image.

    Args:
        max_undo_steps: the engine's undo depth per object; the undo log never refers to more steps.
    """

    def __init__(self, max_undo_steps: int) -> None:
        self.max_undo_steps = max_undo_steps
        self.session: InteractiveEngine | None = None
        self.image_shape: Voxel | None = None
        self.spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
        self.buffer: tuple[Voxel, np.dtype] | None = None
        self.do_autozoom = True
        self.queued: list[PendingPrompt] = []
        self.history: list[int] = []

    # ----------------------------------------------------------------- nnInteractive's operations
    def set_image(self, session: InteractiveEngine, shape: Voxel, spacing: tuple[float, float, float]) -> None:
        """A new image (K, J, I) with spacing in mm (K, J, I): prompts, undo log and a buffer of another shape go."""
        self.session, self.image_shape, self.spacing = session, shape, spacing
        self.queued.clear()
        self.history.clear()
        if self.buffer is not None and self.buffer[0] != shape:
            self.buffer = None

    def set_buffer(self, shape: Voxel, dtype: np.dtype) -> None:
        if shape != self.require_image_shape():
            raise ValueError(f"target buffer shape {list(shape)} differs from the image's {list(self.require_image_shape())}")
        self.buffer = (shape, dtype)

    def queue(self, prompt: PendingPrompt) -> None:
        self.require_image_shape()
        self.queued.append(prompt)

    def run_queued(self) -> Change:
        """Run every queued prompt in order; ran is False when none was queued."""
        if not self.queued:
            return Change(False)
        session = self._session()
        changed: list[tuple[Voxel, np.ndarray]] = []
        while self.queued:
            prompt = self.queued.pop(0)
            steps = self._run(session, prompt, changed)
            self._remember(steps)
        return self._merged(session, changed)

    def undo_last_prompt(self) -> Change:
        """Take back the last viewer prompt (a queued one first); ran is False when there is none."""
        if self.queued:
            self.queued.pop()
            return Change(True)
        if not self.history:
            return Change(False)
        session = self._session()
        changed = []
        for _ in range(self.history.pop()):
            update = session.undo(OBJECT_ID)
            if update.mask.size:
                changed.append((tuple(int(v) for v in update.origin), update.mask))
        return self._merged(session, changed)

    def reset_interactions(self) -> None:
        """Forget the object, the queued prompts and the undo log (the client zeroes its buffer)."""
        if self.session is not None:
            self.session.reset(None)
        self.queued.clear()
        self.history.clear()

    def initial_segmentation(self, seed: np.ndarray) -> Change:
        """Replace the object's mask by ``seed`` (K, J, I, nonzero = object); one undoable step."""
        session = self._session()
        if tuple(seed.shape) != self.require_image_shape():
            raise ValueError(f"initial segmentation has shape {list(seed.shape)}; the image is "
                             f"{list(self.require_image_shape())}")
        self.queued.clear()
        update = session.set_mask(OBJECT_ID, (seed > 0).astype(np.uint8))
        self._remember(1 if update.mask.size else 0)
        if not update.mask.size:
            return Change(True)
        return Change(True, tuple(int(v) for v in update.origin), update.mask)  # type: ignore[arg-type]

    # -------------------------------------------------------- InteractiveEngine (the /v1 routes)
    def check(self, interaction: object) -> None:
        self._session().check(interaction)

    def interact(self, interaction: object) -> object:
        return self._session().interact(interaction)

    def undo(self, object_id: int) -> object:
        return self._session().undo(object_id)

    def redo(self, object_id: int) -> object:
        return self._session().redo(object_id)

    def reset(self, object_id: int | None = None) -> None:
        self._session().reset(object_id)

    def set_mask(self, object_id: int, mask: np.ndarray) -> object:
        return self._session().set_mask(object_id, mask)

    def mask(self, object_id: int) -> np.ndarray:
        return self._session().mask(object_id)

    # ------------------------------------------------------------------------------ internals
    def _run(self, session: InteractiveEngine, prompt: PendingPrompt,
             changed: list[tuple[Voxel, np.ndarray]]) -> int:
        from tsfm_backend.inference.interactive import Interaction

        converted = prompt.convert(self._current(session, prompt.origin, prompt.shape))
        interactions = []
        if converted.box is not None:
            interactions.append(Interaction("box", True, box=converted.box, object_id=OBJECT_ID))
        interactions += [Interaction("point", True, point=p, object_id=OBJECT_ID) for p in converted.positive]
        interactions += [Interaction("point", False, point=p, object_id=OBJECT_ID) for p in converted.negative]
        for interaction in interactions:  # all checked first: a refused prompt leaves no partial change
            session.check(interaction)
        steps = 0
        for interaction in interactions:
            update = session.interact(interaction)
            if update.mask.size:
                steps += 1
                changed.append((tuple(int(v) for v in update.origin), update.mask))  # type: ignore[arg-type]
        return steps

    def _remember(self, steps: int) -> None:
        self.history.append(steps)
        # The engine forgets its oldest steps past max_undo_steps: so does the log, whole prompts at a time.
        while self.history and (sum(self.history) > self.max_undo_steps or len(self.history) > self.max_undo_steps):
            self.history.pop(0)

    def _current(self, session: InteractiveEngine, origin: Voxel, shape: Voxel) -> np.ndarray | None:
        from tsfm_backend.inference.interactive import PromptError

        try:
            mask = session.mask(OBJECT_ID)
        except PromptError:  # the object has no mask yet
            return None
        return mask[tuple(slice(o, o + n) for o, n in zip(origin, shape, strict=True))]

    def _merged(self, session: InteractiveEngine, changed: list[tuple[Voxel, np.ndarray]]) -> Change:
        """One answer for several engine updates: the mask over the union of their boxes."""
        if not changed:
            return Change(True)
        if len(changed) == 1:
            return Change(True, changed[0][0], changed[0][1])
        low = tuple(min(origin[a] for origin, _ in changed) for a in range(3))
        high = tuple(max(origin[a] + mask.shape[a] for origin, mask in changed) for a in range(3))
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        return Change(True, low, session.mask(OBJECT_ID)[box])  # type: ignore[arg-type]

    def _session(self) -> InteractiveEngine:
        if self.session is None:
            raise NoImage("this lease has no image yet: call set_image first")
        return self.session

    def require_image_shape(self) -> Voxel:
        """The image's (K, J, I) shape; ``NoImage`` before ``set_image``."""
        if self.image_shape is None:
            raise NoImage("this lease has no image yet: call set_image first")
        return self.image_shape
