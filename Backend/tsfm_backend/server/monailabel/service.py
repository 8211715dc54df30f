"""The work behind the MONAI Label routes, done with the server's own ``Services``.

Uploads become volumes in the server's ``ImageStore``; automatic models run as ordinary jobs on the
model worker (the route waits for them, as MONAI Label answers inference in one request); click
models run through ``ClickCache`` sessions on the same worker, interactive requests first. Nothing
here knows HTTP: methods take parsed values and raise ``errors.ServiceError`` subclasses.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tsfm_backend.image_io import read_volume
from tsfm_backend.inference.interactive import serves_clicks
from tsfm_backend.server.errors import BadInput, NotFound, ServiceError
from tsfm_backend.server.jobs import Job
from tsfm_backend.server.monailabel.info import CLICKS_SUFFIX
from tsfm_backend.server.monailabel.multipart import FormPart
from tsfm_backend.server.monailabel.prompts import Prompt, click_prompts, job_options
from tsfm_backend.server.monailabel.references import ImageNames, UploadSession, UploadSessions
from tsfm_backend.server.monailabel.replay import OBJECT_ID, ClickCache
from tsfm_backend.server.monailabel.results import label_names, renumbered
from tsfm_backend.server.schemas import JobCreate
from tsfm_backend.server.services import Services
from tsfm_backend.volume import Volume, VolumeError

# Volume files an upload may be: single files SimpleITK reads (a .nhdr or .mhd would need a second file).
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


class JobFailed(ServiceError):
    """An automatic segmentation that ran and failed (MONAI Label answers a failed inference with 500)."""

    status = 500


class MonaiLabelService:
    """MONAI Label's image references, click cache and inference over ``services``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.names = ImageNames()
        self.sessions = UploadSessions()
        self.clicks = ClickCache(self.settings.max_sessions, self.settings.session_idle_s)

    # ---- uploads ---------------------------------------------------------------------------------
    def store_upload(self, part: FormPart) -> str:
        """Read an uploaded volume file and keep it in the image store; returns its image id.

        The volume's header is checked against the server's limits before its voxels are read
        (``image_io.read_volume``), so a small file that declares a huge image costs nothing.
        """
        filename = Path(part.filename or "").name
        suffix = next((s for s in UPLOAD_SUFFIXES if filename.lower().endswith(s)), None)
        if suffix is None:
            raise BadInput(f"upload {filename or 'without a file name'!r} is not a volume file this server reads; "
                           f"send one of {', '.join(UPLOAD_SUFFIXES)} (Slicer saves .nii.gz by default)")
        max_bytes = min(self.settings.max_array_bytes, self.services.images.max_bytes)
        with tempfile.TemporaryDirectory(prefix="tsfm-monailabel-") as folder:
            path = Path(folder) / f"upload{suffix}"
            path.write_bytes(part.data)
            try:
                volume = read_volume(path, max_bytes=max_bytes)
            except VolumeError as error:
                raise BadInput(str(error).replace(str(path), filename)) from error
        image_id, _ = self.services.images.put(volume)
        return image_id

    def upload_to_datastore(self, name: str, part: FormPart) -> str:
        image_id = self.store_upload(part)
        self.names.put(name, image_id)
        return image_id

    def session(self, session_id: str, touch: bool) -> UploadSession:
        """A live session whose image the store still holds; NotFound (404) otherwise."""
        session = self.sessions.get(session_id, touch)
        if session.image_id not in self.services.images:
            raise NotFound(f"Session ({session_id}) Not Found: its image was dropped from the server's image store "
                           "to make room; upload the image again")
        return session

    def image_id(self, name: str, session_id: str) -> str:
        """The image an inference request means: its session's, else the one uploaded under ``name``."""
        if session_id:
            return self.session(session_id, touch=True).image_id
        return self.names.get(name)

    # ---- inference -------------------------------------------------------------------------------
    def resolve_model(self, name: str) -> tuple[str, bool]:
        """``(served model id, True for automatic segmentation)`` of a model name ``/info/`` listed;
        NotFound (404) names the served models."""
        base = name.removesuffix(CLICKS_SUFFIX)
        if name not in self.services.models.ids and base != name and base in self.services.models.ids:
            card = self.services.models.get(base).card
            if card.kind == "automatic" and serves_clicks(card):
                return base, False
        return name, self.services.models.get(name).card.kind == "automatic"

    def start_job(self, model: str, image_id: str, params: dict[str, Any]) -> Job:
        """Queue an automatic segmentation with the job options among ``params``."""
        request = JobCreate(image_id=image_id, model=model, options=job_options(params))
        return self.services.submit_job(request)

    def job_labels(self, job: Job) -> tuple[np.ndarray, dict[str, int]]:
        """A finished job's labels renumbered 1..N and their ``label_names``; JobFailed if it failed."""
        if job.state == "failed":
            raise JobFailed(f"segmentation with {job.model} failed: {job.message}")
        labels, names = self.services.jobs.result(job.id)
        return renumbered(labels, names), label_names(names)

    def click_mask(self, model: str, image_id: str, params: dict[str, Any]) -> tuple[np.ndarray, dict[str, int]]:
        """The uint8 (K, J, I) mask of one segment from all its clicks, and ``{label: 1}``."""
        loaded = self.services.models.get(model)
        volume = self.services.images.get(image_id)
        wanted = click_prompts(params, volume.shape)
        services, settings = self.services, self.settings

        def open_engine() -> Any:
            return services.engine.open_session(loaded, volume, services.device, None, 0)

        def interaction(prompt: Prompt) -> Any:
            return services.engine.interaction(prompt.kind, prompt.positive, prompt.point, prompt.box, OBJECT_ID)

        def run_on_worker(task: Any) -> Any:
            return services.worker.call(task, settings.interaction_timeout_s, settings.retry_after_s)

        try:
            mask = self.clicks.mask((image_id, model, wanted.label), wanted, open_engine, interaction, run_on_worker)
        except ValueError as error:
            raise BadInput(f"{model} cannot run these prompts: {error}") from error
        return mask, {wanted.label: 1}

    def volume(self, image_id: str) -> Volume:
        return self.services.images.get(image_id)
