"""The model worker, job manager and session registry on their own, with a stand-in engine.

The stand-in replaces only the neural network call (the edge); queues, threads, states, leases and
errors are the real ones. The HTTP suites run the same code with real models.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from tsfm_backend.server.errors import Busy, Conflict, Expired, NotFound
from tsfm_backend.server.jobs import JobManager
from tsfm_backend.server.sessions import SessionRegistry
from tsfm_backend.server.worker import Worker
from tsfm_backend.volume import Volume


@pytest.fixture
def worker():  # noqa: ANN201
    worker = Worker()
    yield worker
    worker.stop()


class GatedEngine:
    """Segments by thresholding; each job polls ``is_cancelled`` per "window" and can be held at a gate."""

    def __init__(self, windows: int = 5) -> None:
        self.windows = windows
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_with: BaseException | None = None

    def segment(self, loaded, volume, options, device, progress, is_cancelled):  # noqa: ANN001, ANN201
        self.started.set()
        if self.fail_with is not None:
            raise self.fail_with
        for window in range(self.windows):
            self.gate.wait(10)
            if is_cancelled():
                raise RuntimeError("cancelled by the caller")
            progress((window + 1) / self.windows, f"window batch {window + 1} of {self.windows}")
        return (volume.array > 0).astype(np.uint8), {1: "foreground"}


def _loaded(kind: str = "automatic") -> SimpleNamespace:
    return SimpleNamespace(card=SimpleNamespace(id="stand-in", kind=kind))


def _volume() -> Volume:
    array = np.zeros((4, 5, 6), np.int16)
    array[1:3, 2:4, 3:5] = 100
    return Volume(array)


def _wait_for(condition, timeout_s: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_interactive_tasks_run_before_queued_jobs(worker: Worker) -> None:
    order: list[str] = []
    running, hold = threading.Event(), threading.Event()
    worker.submit_batch(lambda: running.set() or hold.wait(10))
    running.wait(10)
    jobs = [worker.submit_batch(lambda n=n: order.append(f"job{n}")) for n in range(2)]
    clicks = []
    for n in range(2):
        thread = threading.Thread(target=lambda n=n: worker.call(lambda: order.append(f"click{n}"), 10))
        thread.start()
        clicks.append(thread)
        _wait_for(lambda n=n: worker.pending_interactive == n + 1)
    hold.set()
    for thread in clicks:
        thread.join(10)
    for future in jobs:
        future.result(10)
    assert order == ["click0", "click1", "job0", "job1"]


def test_a_click_runs_inside_a_running_job_between_window_batches(worker: Worker) -> None:
    engine = GatedEngine(windows=3)
    engine.gate.clear()
    jobs = JobManager(worker, engine, "cpu", max_queued=4, kept=8)
    job = jobs.submit(_loaded(), _volume(), "a" * 32, {})
    _wait_for(engine.started.is_set)
    answer: list[str] = []
    click = threading.Thread(target=lambda: answer.append(worker.call(lambda: threading.current_thread().name, 10)))
    click.start()
    _wait_for(lambda: worker.pending_interactive == 1)
    engine.gate.set()  # the job reaches its next is_cancelled() poll, which lets the click through
    click.join(10)
    assert answer == ["tsfm-model-worker"]
    _wait_for(lambda: job.state == "done")


def test_a_job_reports_progress_and_its_result(worker: Worker) -> None:
    jobs = JobManager(worker, GatedEngine(), "cpu", max_queued=4, kept=8)
    with pytest.raises(NotFound):
        jobs.get("0" * 32)
    job = jobs.submit(_loaded(), _volume(), "a" * 32, {"step": 0.5})
    _wait_for(lambda: job.state == "done")
    labels, names = jobs.result(job.id)
    assert labels.sum() == 8 and names == {1: "foreground"}
    assert job.progress == 1.0 and job.seconds is not None


def test_out_of_memory_fails_the_job_and_the_next_job_still_runs(worker: Worker) -> None:
    class OutOfMemoryError(RuntimeError):  # the name torch.cuda uses
        pass

    engine = GatedEngine()
    engine.fail_with = OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    jobs = JobManager(worker, engine, "cuda:0", max_queued=4, kept=8)
    failed = jobs.submit(_loaded(), _volume(), "a" * 32, {})
    _wait_for(lambda: failed.state == "failed")
    assert failed.message.startswith("out of memory on cuda:0") and "fast option" in failed.message
    with pytest.raises(Conflict, match="failed"):
        jobs.result(failed.id)
    engine.fail_with = None
    ok = jobs.submit(_loaded(), _volume(), "a" * 32, {})
    _wait_for(lambda: ok.state == "done")


def test_any_engine_error_becomes_a_failed_job_with_its_message(worker: Worker) -> None:
    engine = GatedEngine()
    engine.fail_with = ValueError("image has 2 channels, model expects 1")
    jobs = JobManager(worker, engine, "cpu", max_queued=4, kept=8)
    job = jobs.submit(_loaded(), _volume(), "a" * 32, {})
    _wait_for(lambda: job.state == "failed")
    assert job.message == "ValueError: image has 2 channels, model expects 1"


def test_cancel_a_running_job_within_one_window_batch_and_a_queued_one_at_once(worker: Worker) -> None:
    engine = GatedEngine(windows=100)
    engine.gate.clear()
    jobs = JobManager(worker, engine, "cpu", max_queued=4, kept=8)
    running = jobs.submit(_loaded(), _volume(), "a" * 32, {})
    queued = jobs.submit(_loaded(), _volume(), "a" * 32, {})
    _wait_for(engine.started.is_set)
    assert jobs.queue_position(queued) == 1
    assert jobs.cancel(queued.id).state == "cancelled"
    jobs.cancel(running.id)
    engine.gate.set()
    _wait_for(lambda: running.state == "cancelled")
    assert running.progress < 0.05  # stopped at the first poll after the request, not at the end
    with pytest.raises(Conflict, match="cancelled"):
        jobs.result(running.id)


def test_a_full_queue_answers_busy_and_old_jobs_are_forgotten(worker: Worker) -> None:
    engine = GatedEngine()
    engine.gate.clear()
    jobs = JobManager(worker, engine, "cpu", max_queued=2, kept=2, retry_after_s=7)
    first = jobs.submit(_loaded(), _volume(), "a" * 32, {})
    _wait_for(engine.started.is_set)
    waiting = [jobs.submit(_loaded(), _volume(), "a" * 32, {}) for _ in range(2)]
    with pytest.raises(Busy) as busy:
        jobs.submit(_loaded(), _volume(), "a" * 32, {})
    assert busy.value.retry_after_s == 7
    engine.gate.set()
    _wait_for(lambda: all(job.state == "done" for job in waiting))
    with pytest.raises(NotFound):
        jobs.get(first.id)
    assert jobs.get(waiting[-1].id).state == "done"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_by_liveness_or_idleness_and_then_answer_expired() -> None:
    clock = Clock()
    registry = SessionRegistry(max_sessions=4, liveness_s=60, idle_s=600, clock=clock)
    quiet = registry.add("m", "a" * 32, engine=object())
    idle = registry.add("m", "a" * 32, engine=object())
    for _ in range(10):  # heartbeats keep `idle` alive on the liveness clock, never on the idle one
        clock.now += 55
        registry.get(idle.id, active=False)
    clock.now += 55
    with pytest.raises(Expired, match="no request for 60 s"):
        registry.get(quiet.id, active=True)
    with pytest.raises(Expired, match="no interaction for 600 s"):
        registry.get(idle.id, active=False)
    with pytest.raises(NotFound):
        registry.get("f" * 32, active=True)
    assert len(registry) == 0


def test_session_capacity_is_enforced_and_freed_by_close() -> None:
    registry = SessionRegistry(max_sessions=2, liveness_s=60, idle_s=600, retry_after_s=3)
    first = registry.add("m", "a" * 32, engine=object())
    registry.add("m", "a" * 32, engine=object())
    with pytest.raises(Busy, match="maximum of 2"):
        registry.ensure_capacity()
    registry.close(first.id)
    registry.add("m", "a" * 32, engine=object())
    with pytest.raises(NotFound):
        registry.close(first.id)


def test_a_session_in_the_middle_of_a_request_does_not_expire() -> None:
    clock = Clock()
    registry = SessionRegistry(max_sessions=2, liveness_s=60, idle_s=600, clock=clock)
    session = registry.add("m", "a" * 32, engine=object())
    with session.lock:
        clock.now += 1000
        assert registry.sweep() == []
        registry.touch(session)
    assert registry.get(session.id, active=True) is session
    assert registry.expires_in(session) == 60


def test_peek_finds_a_session_without_renewing_either_clock() -> None:
    clock = Clock()
    registry = SessionRegistry(max_sessions=2, liveness_s=60, idle_s=600, clock=clock)
    session = registry.add("m", "a" * 32, engine=object())
    clock.now += 50
    assert registry.peek(session.id) is session
    assert (session.last_seen, session.last_active) == (1000.0, 1000.0)
    assert registry.expires_in(session) == 10
    clock.now += 11  # past the liveness the peek did not renew
    with pytest.raises(Expired, match="no request for 60 s"):
        registry.peek(session.id)
    with pytest.raises(NotFound):
        registry.peek("f" * 32)
