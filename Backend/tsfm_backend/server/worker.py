"""The one thread that runs every model call, interactive requests first.

All GPU (or CPU) work of the server runs on this single persistent thread: it serialises the device
without a lock, keeps cuDNN's thread-local plan caches warm, and makes the scheduling rule a queue
rule: an interactive task always runs before a queued batch job. While a job runs, its sliding
window asks ``is_cancelled()`` between window batches; the job manager answers by calling
``run_interactive_now()`` first, so a click waits for at most one window batch of a running job,
not for the whole job.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from tsfm_backend.server.errors import Busy

log = logging.getLogger(__name__)
T = TypeVar("T")


class Worker:
    """A single daemon thread with two FIFO queues: interactive (first) and batch."""

    def __init__(self, name: str = "tsfm-model-worker") -> None:
        self._interactive: deque[tuple[Callable[[], Any], Future]] = deque()
        self._batch: deque[tuple[Callable[[], Any], Future]] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def call(self, task: Callable[[], T], timeout_s: float, retry_after_s: int = 2) -> T:
        """Run ``task`` on the worker ahead of queued jobs and return its result (or raise its error).

        Raises:
            Busy: the task did not start within ``timeout_s`` seconds (it is withdrawn).
        """
        future: Future = Future()
        with self._wakeup:
            self._interactive.append((task, future))
            self._wakeup.notify()
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            if future.cancel():
                raise Busy(f"the model worker did not get to this request within {timeout_s:.0f} s",
                           retry_after_s) from None
            return future.result()

    def submit_batch(self, task: Callable[[], Any]) -> Future:
        """Queue a long task behind every interactive one; its Future completes when it has run."""
        future: Future = Future()
        with self._wakeup:
            self._batch.append((task, future))
            self._wakeup.notify()
        return future

    def run_interactive_now(self) -> None:
        """Run every waiting interactive task; a no-op unless called on the worker thread (from a job)."""
        if threading.current_thread() is not self._thread:
            return
        while True:
            with self._wakeup:
                if not self._interactive:
                    return
                task, future = self._interactive.popleft()
            with _outside_the_job():
                _run(task, future)

    @property
    def pending_interactive(self) -> int:
        with self._wakeup:
            return len(self._interactive)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish the running task, cancel the queued ones and end the thread."""
        with self._wakeup:
            self._stopping = True
            queued = list(self._interactive) + list(self._batch)
            self._interactive.clear()
            self._batch.clear()
            self._wakeup.notify_all()
        for _, future in queued:
            future.cancel()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                while not (self._stopping or self._interactive or self._batch):
                    self._wakeup.wait()
                if self._stopping:
                    return
                queue = self._interactive if self._interactive else self._batch
                task, future = queue.popleft()
            _run(task, future)


def _run(task: Callable[[], Any], future: Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = task()
    except BaseException as error:  # the caller gets every failure; the worker thread lives on
        future.set_exception(error)
    else:
        future.set_result(result)


class _outside_the_job:
    """Undo a running job's torch modes for a task run in the middle of it.

    Inside a job the sliding window may hold ``torch.inference_mode`` or autocast; an interactive
    model must see neither (inference tensors cannot be updated in place later, and autocast would
    change its numbers).
    """

    def __enter__(self) -> None:
        import torch

        self._modes = [torch.inference_mode(False), torch.autocast("cpu", enabled=False)]
        if torch.cuda.is_available():
            self._modes.append(torch.autocast("cuda", enabled=False))
        for mode in self._modes:
            mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(None, None, None)
