"""Automatic segmentation as a job the GUI polls: upload, start, poll (non-blocking), result, cancel.

``AutomaticJob.poll()`` asks the server once and returns at once, so the widget calls it from a
``qt.QTimer`` and Slicer never freezes; ``wait()`` loops over the same call for scripts. The result
becomes segments on the exact grid of the input volume (``segments.labels_to_segmentation``) with
provenance on every segment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import slicer

from . import provenance
from .client import BackendClient, BackendError
from .segments import labels_to_segmentation
from .volumes import image_payload

FINAL_STATES = ("done", "failed", "cancelled")


class JobFailed(BackendError):
    """The server ran the job and it failed or was cancelled (message from the server)."""


@dataclass
class JobStatus:
    state: str
    progress: float
    message: str

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


class AutomaticJob:
    """One whole-volume segmentation of ``volume_node`` by ``model`` on the server behind ``client``."""

    def __init__(self, client: BackendClient, volume_node: slicer.vtkMRMLScalarVolumeNode, model: str,
                 options: dict[str, Any] | None = None) -> None:
        self.client = client
        self.volume_node = volume_node
        self.model = model
        self.options = dict(options or {})
        self.job_id = ""
        self.status = JobStatus("new", 0.0, "")

    def start(self) -> str:
        """Upload the image (skipped when the server has it) and queue the job; returns the job id."""
        payload = image_payload(self.volume_node)
        self.status = JobStatus("uploading", 0.0, "sending the image")
        image_id = self.client.upload_image(payload.array, payload.spacing, payload.origin, payload.direction)
        self.job_id = self.client.start_job(image_id, self.model, self.options)
        self.status = JobStatus("queued", 0.0, "queued")
        return self.job_id

    def poll(self) -> JobStatus:
        """One status request; never blocks longer than that request."""
        answer = self.client.job(self.job_id)
        self.status = JobStatus(answer["state"], float(answer.get("progress", 0.0)), answer.get("message", ""))
        return self.status

    def cancel(self) -> None:
        if self.job_id and not self.status.finished:
            self.client.cancel_job(self.job_id)

    def wait(self, poll_s: float = 0.5, timeout_s: float | None = None,
             on_progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Blocking loop over ``poll`` (for scripts and tests)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.poll().finished:
            if on_progress is not None:
                on_progress(self.status)
            if deadline is not None and time.monotonic() > deadline:
                raise BackendError(f"job {self.job_id} still {self.status.state} after {timeout_s} s")
            time.sleep(poll_s)
        return self.status

    def result_into(self, segmentation_node: slicer.vtkMRMLSegmentationNode | None = None,
                    backend: str = "") -> tuple[slicer.vtkMRMLSegmentationNode, dict[int, str]]:
        """Fetch the label map and add its segments (named, coloured, with provenance) to a segmentation."""
        if self.status.state != "done":
            raise JobFailed(f"job {self.job_id} {self.status.state}: {self.status.message or 'no result'}")
        labels, names = self.client.job_result(self.job_id)
        node, created = labels_to_segmentation(labels, names, self.volume_node, segmentation_node)
        checksums = provenance.label_checksums(labels)
        for label, segment_id in created.items():
            provenance.record_model_output(node, segment_id, self.volume_node, self.model, "automatic",
                                           backend=backend, checksum=checksums[label])
        return node, created
