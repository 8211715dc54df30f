"""The ``/v1`` HTTP API: routes only. Each one parses, calls ``Services`` and maps errors to a status.

Concurrency: routes with a body read it on the event loop and hand the work to the thread pool;
the others are plain ``def`` routes, which FastAPI runs in that pool. Model work then queues on the
single worker thread (interactive first). Two gates (``limits.Gate``) keep that pool from filling
up: at most ``max_model_requests`` interactive requests wait for the worker and at most
``max_uploads`` frame bodies are received and decoded at once; one more is answered 503 with
Retry-After at once. Health checks, heartbeats and the token check run on the event loop, never in
the pool, so they answer however busy the server is.
Every error answers ``{"error": message}`` with a 4xx status (503 + Retry-After at capacity, 500 for
a broken model catalog); tracebacks stay in the server log. Model downloads run on their own thread
(``downloads.py``). The protocol is documented in ``Backend/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from tsfm_backend.server import monailabel, nninteractive, schemas
from tsfm_backend.server.bearer import bearer_check
from tsfm_backend.server.engine import MaskCrop
from tsfm_backend.server.error_answers import add_error_handlers
from tsfm_backend.server.errors import Invalid
from tsfm_backend.server.limits import BodySizeLimit, Gate
from tsfm_backend.server.mounts import PrefixMount
from tsfm_backend.server.services import Services, describe_validation
from tsfm_backend.server.settings import API_VERSION, Settings
from tsfm_backend.server.wire import MEDIA_TYPE, WireError, describe_json_error, encode_frame

SWEEP_EVERY_S = 5.0

HexId = Annotated[str, Path(pattern=schemas.HEX_ID, description="32 lower-case hex digits made by the server")]


def make_app(settings: Settings, services: Services) -> FastAPI:
    """The FastAPI application over ``services`` (already started; closed when the app shuts down)."""

    model_gate = Gate(settings.max_model_requests, "interactive model requests", settings.retry_after_s)
    upload_gate = Gate(settings.max_uploads, "uploads", settings.retry_after_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        # The gated requests never take more than their share of the pool that runs the ``def`` routes.
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, settings.max_model_requests + settings.max_uploads + 16)
        sweeper = asyncio.create_task(_sweep_sessions(services))
        try:
            yield
        finally:
            sweeper.cancel()
            await run_in_threadpool(services.close)

    # The schema is served (for tools) behind the token like every route but health; the HTML docs
    # pages are not served at all: they load scripts from a CDN.
    app = FastAPI(title="tsfm-backend", version=API_VERSION, lifespan=lifespan, openapi_url=None,
                  docs_url=None, redoc_url=None,
                  description="Automatic and interactive 3D segmentation; see Backend/README.md")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    # The plugins' protocols, each under its prefix with its own body limits and error format; added
    # after /v1's body limit, so they run before it (mounts.py says why).
    app.add_middleware(PrefixMount, prefix=nninteractive.PREFIX,  # SlicerNNInteractive's Remote mode
                       target=nninteractive.make_app(settings, services, model_gate, upload_gate))
    app.add_middleware(PrefixMount, prefix=monailabel.PREFIX,  # MONAI Label's Slicer plugin
                       target=monailabel.make_app(settings, services, model_gate, upload_gate))
    add_error_handlers(app, "error", {WireError: 400})
    auth = [Depends(bearer_check(settings.token, "missing or wrong bearer token (send 'Authorization: Bearer <token>')"))]

    @app.get("/v1/health", response_model=schemas.Health)
    async def health() -> schemas.Health:
        return schemas.Health(api_version=API_VERSION)

    @app.get("/v1/openapi.json", dependencies=auth, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/v1/info", response_model=schemas.Info, dependencies=auth)
    def info() -> schemas.Info:
        return services.info()

    @app.get("/v1/models", response_model=list[schemas.ModelInfo], dependencies=auth)
    def models() -> list[schemas.ModelInfo]:
        return services.models.describe()

    @app.get("/v1/catalog", response_model=list[schemas.CatalogInfo], dependencies=auth)
    def catalog() -> list[schemas.CatalogInfo]:
        return services.catalog()

    @app.post("/v1/downloads", response_model=schemas.DownloadStatus, status_code=202, dependencies=auth)
    def start_download(request: schemas.DownloadCreate, response: Response) -> schemas.DownloadStatus:
        download, created = services.start_download(request)
        if not created:
            response.status_code = 200  # that model's download was already queued or running: this is it
        return services.download_status(download)

    @app.get("/v1/downloads/{download_id}", response_model=schemas.DownloadStatus, dependencies=auth)
    def download(download_id: HexId) -> schemas.DownloadStatus:
        return services.download_status(services.downloads.get(download_id))

    @app.delete("/v1/downloads/{download_id}", response_model=schemas.DownloadStatus, status_code=202,
                dependencies=auth)
    def cancel_download(download_id: HexId) -> schemas.DownloadStatus:
        return services.download_status(services.downloads.cancel(download_id))

    @app.post("/v1/images", response_model=schemas.ImageInfo, status_code=201, dependencies=auth)
    async def upload_image(request: Request, response: Response) -> schemas.ImageInfo:
        with upload_gate.slot():  # taken before a byte of the body is read
            image = await run_in_threadpool(services.upload_image, await request.body())
        if image.exists:
            response.status_code = 200
        return image

    @app.get("/v1/images/{image_id}", response_model=schemas.ImageInfo, dependencies=auth)
    def image(image_id: HexId) -> schemas.ImageInfo:
        return services.image_info(image_id)

    @app.head("/v1/images/{image_id}", dependencies=auth, response_class=Response)
    def has_image(image_id: HexId) -> Response:
        services.image_info(image_id)
        return Response(status_code=200)

    @app.post("/v1/jobs", response_model=schemas.JobStatus, status_code=202, dependencies=auth)
    def submit_job(request: schemas.JobCreate) -> schemas.JobStatus:
        return services.job_status(services.submit_job(request))

    @app.get("/v1/jobs/{job_id}", response_model=schemas.JobStatus, dependencies=auth)
    def job(job_id: HexId) -> schemas.JobStatus:
        return services.job_status(services.jobs.get(job_id))

    @app.get("/v1/jobs/{job_id}/result", dependencies=auth, response_class=Response)
    def job_result(job_id: HexId) -> Response:
        labels, names = services.jobs.result(job_id)
        header = {"job_id": job_id, "names": {str(k): v for k, v in sorted(names.items())}}
        return Response(encode_frame(header, labels), media_type=MEDIA_TYPE)

    @app.delete("/v1/jobs/{job_id}", response_model=schemas.JobStatus, status_code=202, dependencies=auth)
    def cancel_job(job_id: HexId) -> schemas.JobStatus:
        return services.job_status(services.jobs.cancel(job_id))

    @app.post("/v1/sessions", response_model=schemas.SessionInfo, status_code=201, dependencies=auth)
    async def create_session(request: schemas.SessionCreate) -> schemas.SessionInfo:
        with model_gate.slot():
            return await run_in_threadpool(services.create_session, request)

    @app.post("/v1/sessions/{session_id}/interactions", dependencies=auth, response_class=Response,
              openapi_extra={"requestBody": {"content": {
                  "application/json": {"schema": schemas.Interaction.model_json_schema()},
                  MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}})
    async def interact(session_id: HexId, request: Request) -> Response:
        with model_gate.slot():
            if request.headers.get("content-type", "").split(";")[0].strip() == MEDIA_TYPE:
                with upload_gate.slot():  # a starting mask is an upload too
                    crop = await run_in_threadpool(services.seed_and_interact, session_id, await request.body())
            else:
                interaction = _parse_json(schemas.Interaction, await request.body())
                crop = await run_in_threadpool(services.interact, session_id, interaction)
        return _crop_response(crop)

    @app.post("/v1/sessions/{session_id}/undo", dependencies=auth, response_class=Response)
    async def undo(session_id: HexId, request: schemas.ObjectRef) -> Response:
        with model_gate.slot():
            return _crop_response(await run_in_threadpool(services.undo, session_id, request.object_id))

    @app.post("/v1/sessions/{session_id}/redo", dependencies=auth, response_class=Response)
    async def redo(session_id: HexId, request: schemas.ObjectRef) -> Response:
        with model_gate.slot():
            return _crop_response(await run_in_threadpool(services.redo, session_id, request.object_id))

    @app.post("/v1/sessions/{session_id}/reset", status_code=204, dependencies=auth, response_class=Response)
    async def reset(session_id: HexId, request: schemas.ResetRequest) -> Response:
        with model_gate.slot():
            await run_in_threadpool(services.reset, session_id, request.object_id)
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/heartbeat", response_model=schemas.LeaseInfo, dependencies=auth)
    async def heartbeat(session_id: HexId) -> schemas.LeaseInfo:
        return services.heartbeat(session_id)  # a registry lookup under a short lock: no pool thread

    @app.delete("/v1/sessions/{session_id}", status_code=204, dependencies=auth, response_class=Response)
    def close_session(session_id: HexId) -> Response:
        services.sessions.close(session_id)
        return Response(status_code=204)

    return app


def _parse_json(schema: type, body: bytes) -> Any:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors, and so is an integer of more than 4300
        # digits; nesting thousands deep raises RecursionError. All are bad input, never a 500.
        raise Invalid(f"body is not valid JSON: {describe_json_error(error)}") from error
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise Invalid(describe_validation(error.errors())) from error


def _crop_response(crop: MaskCrop) -> Response:
    if crop.image_shape is None:
        raise ValueError("a mask crop must carry its image's shape (services fill it in before the change)")
    header = schemas.MaskCropHeader(object_id=crop.object_id, origin=crop.origin, image_shape=crop.image_shape)
    return Response(encode_frame(header.model_dump(), crop.mask), media_type=MEDIA_TYPE)


async def _sweep_sessions(services: Services) -> None:
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        services.sessions.sweep()
