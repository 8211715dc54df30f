"""Everything behind the routes: models loaded once, images, jobs, sessions and the model worker.

``Services`` is built once by ``tsfm-backend serve`` (or a test) and handed to ``app.make_app``. Its
methods take validated schema objects and return plain data; they raise ``errors.ServiceError``
subclasses that the app maps to status codes. Model work always runs on the one ``Worker`` thread.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from tsfm_backend.catalog import catalog_entry, load_catalog
from tsfm_backend.catalog_install import LicenseNotAccepted, check_license
from tsfm_backend.checkpoints import LoadedModel, load_model
from tsfm_backend.formats.errors import CheckpointError, UnknownModelError
from tsfm_backend.inference.interactive import serves_clicks
from tsfm_backend.server import schemas
from tsfm_backend.server.downloads import Download, DownloadManager, installed_folder
from tsfm_backend.server.engine import Engine, MaskCrop, as_crop, check_job_size
from tsfm_backend.server.errors import BadInput, Conflict, Invalid, Misconfigured, NotFound, TooLarge
from tsfm_backend.server.images import ImageStore
from tsfm_backend.server.jobs import Job, JobManager
from tsfm_backend.server.sessions import Session, SessionRegistry
from tsfm_backend.server.settings import API_VERSION, Settings
from tsfm_backend.server.wire import LABEL_DTYPES, array_spec, decode_array, split_frame
from tsfm_backend.server.worker import Worker
from tsfm_backend.store import DEFAULT_INTERACTIVE_MODEL, installed_models
from tsfm_backend.volume import Volume, VolumeError

log = logging.getLogger(__name__)
T = TypeVar("T")
VERSIONED_PACKAGES = ("tsfm-backend", "torch", "numpy", "fastapi", "uvicorn", "pydantic", "monai", "SimpleITK")


class ModelRegistry:
    """The models this server serves, loaded at start (and after a download) and kept on the device."""

    def __init__(self, models: Iterable[LoadedModel]) -> None:
        self._models = {loaded.card.id: loaded for loaded in models}
        # Routes read while the download thread adds; the lock keeps every reader on one consistent dict.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_ids: Iterable[str], device: Any, skip_broken: bool = False) -> ModelRegistry:
        """Load each id or path with ``checkpoints.load_model``; ``skip_broken`` logs and skips failures."""
        loaded = []
        for model_id in model_ids:
            try:
                loaded.append(load_model(model_id, device=device))
            except ValueError as error:
                if not skip_broken:
                    raise
                log.error("model %s skipped: %s", model_id, error)
        return cls(loaded)

    def get(self, model_id: str) -> LoadedModel:
        with self._lock:
            loaded = self._models.get(model_id)
        if loaded is None:
            raise NotFound(f"model {model_id!r} is not served here; available: {', '.join(self.ids) or 'none'}")
        return loaded

    def add(self, loaded: LoadedModel) -> None:
        """Serve ``loaded`` from now on (replacing a model of the same id)."""
        with self._lock:
            self._models[loaded.card.id] = loaded
        log.info("model %s is served from now on", loaded.card.id)

    @property
    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def describe(self) -> list[schemas.ModelInfo]:
        """Every served model, the default interactive one first, then by id."""
        with self._lock:
            models = dict(self._models)
        ids = sorted(models, key=lambda model_id: (model_id != DEFAULT_INTERACTIVE_MODEL, model_id))
        cards = [models[model_id].card for model_id in ids]
        return [
            schemas.ModelInfo(
                id=card.id, kind=card.kind, family=card.family, license=card.license,
                classes={str(k): v for k, v in sorted(card.classes.items())}, description=card.description,
                patch_size=card.patch_size, spacing=card.spacing, default=card.id == DEFAULT_INTERACTIVE_MODEL,
                serves_clicks=serves_clicks(card),
            )
            for card in cards
        ]


@dataclass
class Services:
    """The server's state. Build with ``Services.start(settings, models, device)``; ``close()`` at exit."""

    settings: Settings
    device: Any
    models: ModelRegistry
    images: ImageStore
    jobs: JobManager
    sessions: SessionRegistry
    engine: Engine
    downloads: DownloadManager

    @classmethod
    def start(cls, settings: Settings, models: ModelRegistry, device: Any, engine: Engine | None = None) -> Services:
        engine = engine or Engine()
        worker = Worker()
        serve = partial(_serve_installed, models, worker, device, settings.interaction_timeout_s,
                        settings.retry_after_s)
        return cls(
            settings=settings,
            device=device,
            models=models,
            images=ImageStore(settings.image_store_bytes),
            jobs=JobManager(worker, engine, device, settings.max_queued_jobs, settings.kept_jobs,
                            settings.retry_after_s),
            sessions=SessionRegistry(settings.max_sessions, settings.session_liveness_s,
                                     settings.session_idle_s, settings.retry_after_s),
            engine=engine,
            downloads=DownloadManager(serve, retry_after_s=settings.retry_after_s),
        )

    @property
    def worker(self) -> Worker:
        """The model thread, shared by jobs and sessions."""
        return self.jobs.worker

    def close(self) -> None:
        self.downloads.close()
        self.worker.stop()

    # ---- discovery -------------------------------------------------------------------------------
    def info(self) -> schemas.Info:
        from tsfm_backend.device import describe_device

        versions = {"python": platform.python_version(), "api": API_VERSION}
        for package in VERSIONED_PACKAGES:
            try:
                versions[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                continue
        return schemas.Info(
            api_version=API_VERSION, versions=versions, device=describe_device(self.device),
            models=self.models.ids, limits=self.settings.public_limits(),
            queued_jobs=self.jobs.count("queued"), sessions=len(self.sessions), auth=self.settings.token is not None,
        )

    # ---- catalog and downloads ---------------------------------------------------------------------
    def catalog(self) -> list[schemas.CatalogInfo]:
        """Every catalog entry with whether the store has it and whether this server serves it."""
        entries = _read_catalog(load_catalog)
        installed = {card.id for card in installed_models()}
        served = set(self.models.ids)
        return [
            schemas.CatalogInfo(
                id=e.id, title=e.title, kind=e.kind, family=e.family, license=e.license,
                redistributable=e.redistributable, homepage=e.homepage, notes=e.notes, size_bytes=e.size,
                downloadable=e.downloadable, installed=e.id in installed, served=e.id in served,
            )
            for e in entries
        ]

    def start_download(self, request: schemas.DownloadCreate) -> tuple[Download, bool]:
        """Queue the download of a catalog model; (download, created) where False means it already runs.

        A model installed in the store but not served is only loaded (no download, no license
        question: it was accepted when it was installed).
        """
        entry = _read_catalog(lambda: catalog_entry(request.model))
        if entry.id in self.models.ids:
            raise Conflict(f"{entry.id} is already installed and served: it is listed by GET /v1/models")
        if installed_folder(entry.id) is None:
            if not entry.downloadable:
                raise Conflict(
                    f"{entry.id} cannot be downloaded by the server: its files have no direct link. "
                    f"{entry.notes} Download it by hand, run `tsfm-backend import FILE --id {entry.id}` on the "
                    f"server's machine, then ask for this download again to serve it.")
            try:
                check_license(entry, request.accept_license, "send accept_license: true")
            except LicenseNotAccepted as error:
                raise Conflict(str(error)) from None
        return self.downloads.submit(entry, accept_license=request.accept_license)

    def download_status(self, download: Download) -> schemas.DownloadStatus:
        return schemas.DownloadStatus(
            download_id=download.id, model=download.model, state=download.state,  # type: ignore[arg-type]
            bytes_done=download.bytes_done, bytes_total=download.bytes_total, message=download.message,
            seconds=download.seconds,
        )

    # ---- images ----------------------------------------------------------------------------------
    def upload_image(self, body: bytes) -> schemas.ImageInfo:
        """Decode a frame (header ``schemas.ImageUpload``) into a Volume and store it by content id."""
        header, payload = split_frame(body)
        upload = _validated(schemas.ImageUpload, header, "image header")
        dtype, shape, _ = array_spec(header["array"])
        declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if declared > self.images.max_bytes:  # refused before inflating, like max_array_bytes in decode_array
            raise TooLarge(f"image of {declared} bytes exceeds the server's image store of {self.images.max_bytes} bytes")
        array = decode_array(header["array"], payload, self.settings.max_array_bytes)
        try:
            volume = Volume(array, upload.spacing, upload.origin, upload.direction)
        except VolumeError as error:
            raise BadInput(f"image rejected: {error}") from error
        image_id, existed = self.images.put(volume)
        return _image_info(image_id, volume, existed)

    def image_info(self, image_id: str) -> schemas.ImageInfo:
        return _image_info(image_id, self.images.get(image_id), True)

    # ---- jobs ------------------------------------------------------------------------------------
    def submit_job(self, request: schemas.JobCreate) -> Job:
        loaded = self.models.get(request.model)
        if loaded.card.kind != "automatic":
            raise BadInput(f"model {request.model!r} is {loaded.card.kind}: open a session for it instead")
        try:
            loaded.card.require_trained_head()
        except ValueError as error:
            raise BadInput(str(error)) from error
        volume = self.images.get(request.image_id)
        options = request.options.model_dump()
        # Counted from shapes before the job is queued: a tiny step asks for millions of windows, and
        # building their list alone would hold the worker and memory for minutes.
        check_job_size(loaded, volume, options, self.settings.max_windows, self.settings.max_job_bytes)
        return self.jobs.submit(loaded, volume, request.image_id, options)

    def job_status(self, job: Job) -> schemas.JobStatus:
        return schemas.JobStatus(
            job_id=job.id, state=job.state, progress=round(job.progress, 4), message=job.message, model=job.model,
            image_id=job.image_id, queue_position=self.jobs.queue_position(job), seconds=job.seconds,
        )

    # ---- sessions --------------------------------------------------------------------------------
    def create_session(self, request: schemas.SessionCreate) -> schemas.SessionInfo:
        loaded = self.models.get(request.model)
        if not serves_clicks(loaded.card):
            raise BadInput(f"model {request.model!r} is {loaded.card.kind}: submit a job for it instead")
        volume = self.images.get(request.image_id)
        self.sessions.ensure_capacity()
        try:
            engine = self.worker.call(lambda: self.engine.open_session(loaded, volume, self.device, request.modality,
                                                                       self.settings.max_undo_steps),
                                      self.settings.interaction_timeout_s, self.settings.retry_after_s)
        except ValueError as error:
            raise BadInput(f"cannot open a session of {request.model!r} on this image: {error}") from error
        session = self.sessions.add(request.model, request.image_id, engine)
        return schemas.SessionInfo(session_id=session.id, model=session.model, image_id=session.image_id,
                                   modality=getattr(engine, "modality", None),
                                   liveness_s=self.settings.session_liveness_s, idle_s=self.settings.session_idle_s)

    def interact(self, session_id: str, interaction: schemas.Interaction) -> MaskCrop:
        prompt = self._engine_interaction(interaction)
        return self._on_engine(session_id, lambda engine: as_crop(engine.interact(prompt)))

    def seed_and_interact(self, session_id: str, body: bytes) -> MaskCrop:
        """Framed request: set the object's starting mask (payload, K, J, I), then apply the optional prompt."""
        header, payload = split_frame(body)
        request = _validated(schemas.SeededInteraction, header, "interaction header")
        image_shape = self._session_image_shape(self._session(session_id, active=False))
        _, declared_shape, _ = array_spec(header["array"], LABEL_DTYPES)
        if declared_shape != image_shape:  # checked before inflating: a seed is never larger than its image
            raise BadInput(f"starting mask has shape {list(declared_shape)} but the image is {list(image_shape)} "
                           "(K, J, I)")
        mask = decode_array(header["array"], payload, self.settings.max_array_bytes, LABEL_DTYPES)
        if mask.shape != image_shape:
            raise BadInput(f"starting mask has shape {list(mask.shape)} but the image is {list(image_shape)} (K, J, I)")
        seed = (mask > 0).astype(np.uint8)
        prompt = self._engine_interaction(request.interaction) if request.interaction else None

        def apply(engine: Any) -> MaskCrop:
            if prompt is not None:
                engine.check(prompt)  # a prompt the engine refuses must not leave the seed behind
            seeded = engine.set_mask(request.object_id, seed)
            return as_crop(engine.interact(prompt)) if prompt is not None else as_crop(seeded)

        return self._on_engine(session_id, apply)

    def undo(self, session_id: str, object_id: int) -> MaskCrop:
        return self._on_engine(session_id, lambda engine: as_crop(engine.undo(object_id)))

    def redo(self, session_id: str, object_id: int) -> MaskCrop:
        return self._on_engine(session_id, lambda engine: as_crop(engine.redo(object_id)))

    def reset(self, session_id: str, object_id: int | None) -> None:
        self._on_engine(session_id, lambda engine: engine.reset(object_id))

    def heartbeat(self, session_id: str) -> schemas.LeaseInfo:
        session = self._session(session_id, active=False)
        return schemas.LeaseInfo(session_id=session.id, expires_in_s=self.sessions.expires_in(session))

    def _session(self, session_id: str, active: bool) -> Session:
        return self.sessions.get(session_id, active=active)

    def on_session(self, session_id: str, action: Callable[[Session], T], on_worker: bool = True) -> T:
        """Run ``action(session)`` under the session's lock, on the model worker unless ``on_worker`` is False.

        The one way a request changes a session (``/v1``'s and the plugins' protocols' alike): requests
        on one session run in arrival order, both its clocks are renewed before and after (time spent
        waiting for the worker does not count), and a ValueError (a prompt or mask the engine refuses)
        answers 400. ``action`` checks whatever can refuse the request before it changes anything.

        Raises:
            Expired, NotFound: no live session ``session_id`` (410, 404).
            Busy: the worker did not get to it within the interaction timeout.
            BadInput: ``action`` raised a ValueError.
        """
        session = self._session(session_id, active=True)
        with session.lock:
            try:
                if not on_worker:
                    return action(session)
                return self.worker.call(lambda: action(session), self.settings.interaction_timeout_s,
                                        self.settings.retry_after_s)
            except ValueError as error:
                raise BadInput(str(error)) from error
            finally:
                self.sessions.touch(session)

    def _on_engine(self, session_id: str, action: Callable[[Any], T]) -> T:
        """``action(engine)`` of a ``/v1`` session through ``on_session``, once its image is known to be held.

        All or nothing: whatever can refuse the request (the session, its image) is checked before
        ``action`` changes the session, and nothing after it can fail. A change the server made is
        therefore always answered, and a refused request changed nothing. A MaskCrop result carries
        the image shape looked up beforehand.
        """

        def run(session: Session) -> T:
            image_shape = self._session_image_shape(session)
            result = action(session.engine)
            return replace(result, image_shape=image_shape) if isinstance(result, MaskCrop) else result

        return self.on_session(session_id, run)

    def _session_image_shape(self, session: Session) -> tuple[int, int, int]:
        """The shape of the session's image; NotFound once the store evicted it (the session is then of no
        further use: the client uploads the image again and opens a new session)."""
        try:
            return self.images.get(session.image_id).shape
        except NotFound:
            raise NotFound(f"image {session.image_id} of session {session.id} is no longer on the server "
                           "(evicted to make room): nothing was changed; upload the image again and open a new "
                           "session") from None

    def _engine_interaction(self, interaction: schemas.Interaction) -> Any:
        return self.engine.interaction(interaction.kind, interaction.positive, interaction.point,
                                       interaction.box, interaction.object_id)


def _serve_installed(models: ModelRegistry, worker: Worker, device: Any, timeout_s: float, retry_after_s: int,
                     folder: Path) -> None:
    """Load a freshly installed model and serve it; it moves to the device on the model thread, like all
    model work, so it never competes with a running job for the device mid-step."""
    loaded = load_model(folder, device="cpu")
    on_device = worker.call(lambda: LoadedModel(network=loaded.network.to(device), card=loaded.card),
                            timeout_s, retry_after_s)
    models.add(on_device)


def _read_catalog(read: Callable[[], T]) -> T:
    """``read()`` of the catalog with its errors as answers: an unknown id is 404, a broken file 500."""
    try:
        return read()
    except UnknownModelError as error:
        raise NotFound(str(error)) from error
    except CheckpointError as error:
        raise Misconfigured(str(error)) from error


def _validated(schema: type, header: dict[str, Any], what: str) -> Any:
    try:
        return schema.model_validate(header)
    except ValidationError as error:
        raise Invalid(f"{what}: {describe_validation(error.errors())}") from error


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """``field.path: message`` for the first three pydantic errors (what a person needs to fix)."""
    parts = []
    for error in errors[:3]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def _image_info(image_id: str, volume: Volume, existed: bool) -> schemas.ImageInfo:
    return schemas.ImageInfo(image_id=image_id, exists=existed, dtype=volume.array.dtype.name, shape=volume.shape,
                             spacing=volume.spacing, origin=volume.origin, direction=volume.direction)

