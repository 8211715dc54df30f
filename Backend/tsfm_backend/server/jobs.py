"""Automatic segmentation jobs: queue, progress, cancellation and results.

A job moves ``queued -> running -> done | failed | cancelled``. It runs on the shared ``Worker``
behind every interactive request; while it runs, each ``is_cancelled()`` poll of the sliding window
(once per window batch) first lets waiting interactive requests through, then reports the cancel
flag. Any failure, out-of-memory included, ends the job as ``failed`` with a message; the worker
and the server carry on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tsfm_backend.checkpoints import LoadedModel
from tsfm_backend.server.engine import Engine
from tsfm_backend.server.errors import Busy, Conflict, NotFound
from tsfm_backend.server.tasks import Timed
from tsfm_backend.server.worker import Worker
from tsfm_backend.volume import Volume

log = logging.getLogger(__name__)
FINISHED = ("done", "failed", "cancelled")


@dataclass
class Job(Timed):
    """One automatic segmentation; fields change under ``JobManager``'s lock only."""

    id: str
    model: str
    image_id: str
    options: dict[str, Any]
    state: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    started: float | None = None
    finished: float | None = None
    labels: np.ndarray | None = None
    names: dict[int, str] = field(default_factory=dict)
    cancel_requested: threading.Event = field(default_factory=threading.Event)


class JobManager:
    """Creates, runs, reports and forgets jobs.

    Args:
        worker: the shared model thread.
        engine: runs ``segment`` for a job.
        device: torch device the models live on.
        max_queued: jobs allowed to wait at once; more raise Busy (503).
        kept: finished jobs remembered (their results included); older ones are forgotten.
        retry_after_s: Retry-After suggested with Busy.
    """

    def __init__(self, worker: Worker, engine: Engine, device: Any, max_queued: int, kept: int,
                 retry_after_s: int = 2) -> None:
        self.worker, self.engine, self.device = worker, engine, device
        self.max_queued, self.kept, self.retry_after_s = max_queued, kept, retry_after_s
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, loaded: LoadedModel, volume: Volume, image_id: str, options: dict[str, Any]) -> Job:
        """Queue a job for ``volume`` with ``loaded``; raises Busy when ``max_queued`` jobs already wait."""
        with self._lock:
            if self._count("queued") >= self.max_queued:
                raise Busy(f"{self.max_queued} jobs are already queued; try again later", self.retry_after_s)
            job = Job(id=uuid.uuid4().hex, model=loaded.card.id, image_id=image_id, options=dict(options))
            self._jobs[job.id] = job
        self.worker.submit_batch(lambda: self._run(job, loaded, volume))
        log.info("job %s queued: model %s on image %s", job.id, job.model, image_id)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist (or finished long ago and was forgotten)")
        return job

    def queue_position(self, job: Job) -> int | None:
        """Jobs ahead of ``job`` while it is queued (a running job counts), else None."""
        with self._lock:
            if job.state != "queued":
                return None
            ahead = 0
            for other in self._jobs.values():
                if other is job:
                    return ahead
                ahead += other.state in ("queued", "running")
        return None

    def result(self, job_id: str) -> tuple[np.ndarray, dict[int, str]]:
        """Labels (K, J, I) and names of a finished job; raises Conflict while it is not ``done``."""
        job = self.get(job_id)
        with self._lock:
            if job.state != "done" or job.labels is None:
                raise Conflict(f"job {job_id} is {job.state}, it has no result" + (
                    f": {job.message}" if job.state in FINISHED else "; poll GET /v1/jobs/{id} until done"))
            return job.labels, dict(job.names)

    def cancel(self, job_id: str) -> Job:
        """Stop a job: a queued one at once, a running one at its next window batch; finished ones stay."""
        job = self.get(job_id)
        with self._lock:
            if job.state == "queued":
                job.state, job.message, job.finished = "cancelled", "cancelled before it started", time.monotonic()
            if job.state in ("queued", "running", "cancelled"):
                job.cancel_requested.set()
        return job

    def count(self, state: str) -> int:
        with self._lock:
            return self._count(state)

    def _count(self, state: str) -> int:
        return sum(job.state == state for job in self._jobs.values())

    def _run(self, job: Job, loaded: LoadedModel, volume: Volume) -> None:
        with self._lock:
            if job.state != "queued":
                return
            job.state, job.message, job.started = "running", "starting", time.monotonic()

        def progress(fraction: float, message: str) -> None:
            with self._lock:
                job.progress = min(max(float(fraction), job.progress), 1.0)
                job.message = str(message)

        def is_cancelled() -> bool:
            self.worker.run_interactive_now()
            return job.cancel_requested.is_set()

        try:
            labels, names = self.engine.segment(loaded, volume, job.options, self.device, progress, is_cancelled)
            labels = _checked_labels(labels, volume)
        except BaseException as error:  # noqa: B036 - a job must end in a state whatever happened
            self._finish_failed(job, error)
            if not isinstance(error, Exception):
                raise
            return
        with self._lock:
            job.labels, job.names = labels, {int(k): str(v) for k, v in names.items()}
            job.state, job.progress, job.message, job.finished = "done", 1.0, "done", time.monotonic()
            self._forget_old()
        log.info("job %s done in %.1f s", job.id, job.seconds or 0.0)

    def _finish_failed(self, job: Job, error: BaseException) -> None:
        with self._lock:
            job.finished = time.monotonic()
            if job.cancel_requested.is_set():
                job.state, job.message = "cancelled", "cancelled while running"
            else:
                job.state, job.message = "failed", describe_failure(error, self.device)
            self._forget_old()
        if job.state == "failed":
            log.error("job %s failed: %s", job.id, job.message, exc_info=error)
        else:
            log.info("job %s cancelled", job.id)

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state in FINISHED]
        for job_id in finished[: max(0, len(finished) - self.kept)]:
            del self._jobs[job_id]


def describe_failure(error: BaseException, device: Any) -> str:
    """A one-line message for a failed job; out-of-memory gets advice and frees the CUDA cache."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if is_out_of_memory(error):
        _free_cuda_cache()
        return (f"out of memory on {device}: {text[:300]}. Try the fast option, a smaller batch size, "
                "or a smaller image")
    return f"{type(error).__name__}: {text[:500]}"


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _checked_labels(labels: np.ndarray, volume: Volume) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != volume.shape:
        raise ValueError(f"the engine returned labels of shape {labels.shape} for an image of shape {volume.shape}")
    if labels.dtype not in (np.uint8, np.uint16):
        labels = labels.astype(np.uint16 if labels.max(initial=0) > 255 else np.uint8)
    return labels
