"""MONAI Label's REST routes that its 3D Slicer plugin uses for inference: routes only.

| route | what the plugin does with it |
|---|---|
| ``GET /auth/``, ``POST /auth/token``, ``GET /auth/token/valid`` | login (``auth.py``) |
| ``GET /info/`` | fills its model combos (``info.py``) |
| ``PUT /datastore/?image=<name>`` | uploads the volume (form: ``params``, ``file``) before automatic inference |
| ``PUT /session/``, ``GET`` / ``DELETE /session/{id}`` | uploads the volume (form: ``files``) before clicks |
| ``POST /infer/{model}?image=<name>[&session_id=]`` | runs a model (form: ``params``); answers a form of ``params`` JSON and the label map file |

Everything else MONAI Label serves (training, active learning, scoring, stored labels) is answered
501 with a sentence saying so. Errors answer ``{"detail": message}``, MONAI Label's own format, which
the plugin shows as "Status: N; Response: ...". Bodies are bounded per route before they are read:
uploads by ``max_request_bytes`` and the uploads gate, everything else by ``MAX_JSON_BODY_BYTES``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tsfm_backend.server.bearer import bearer_check
from tsfm_backend.server.error_answers import add_error_handlers
from tsfm_backend.server.errors import BadInput, Invalid, TooLarge
from tsfm_backend.server.jobs import FINISHED, Job
from tsfm_backend.server.limits import MAX_JSON_BODY_BYTES, Gate
from tsfm_backend.server.monailabel.auth import (
    MAX_LOGIN_FORM_BYTES,
    WRONG_TOKEN,
    auth_status,
    exchange_password,
)
from tsfm_backend.server.monailabel.info import app_info
from tsfm_backend.server.monailabel.multipart import FormPart, MultipartError, encode_form, parse_form
from tsfm_backend.server.monailabel.results import label_file, result_extension
from tsfm_backend.server.monailabel.service import MonaiLabelService
from tsfm_backend.server.services import Services
from tsfm_backend.server.settings import API_VERSION, Settings
from tsfm_backend.server.wire import describe_json_error

JOB_POLL_S = 0.05
NOT_SERVED = {
    "train": "training", "activelearning": "active learning", "scoring": "scoring",
    "datastore": "the datastore's listing and label storage",
    "batch": "batch inference", "model": "model files", "logs": "server logs", "ohif": "the OHIF viewer",
    "proxy": "proxying", "wsi": "whole-slide images",
}


def make_app(settings: Settings, services: Services, model_gate: Gate, upload_gate: Gate) -> FastAPI:
    """The MONAI Label application over ``services`` (their lifetime is the main application's); click
    requests hold a ``model_gate`` slot and uploads an ``upload_gate`` one, the gates ``/v1`` uses."""
    service = MonaiLabelService(services)
    app = FastAPI(title="tsfm-backend (MONAI Label API)", openapi_url=None, docs_url=None, redoc_url=None)
    add_error_handlers(app, "detail", {MultipartError: 400})
    auth = [Depends(bearer_check(settings.token, WRONG_TOKEN))]

    @app.get("/auth/")
    async def auth_enabled() -> dict[str, Any]:
        return auth_status(settings.token)

    @app.post("/auth/token")
    async def access_token(request: Request) -> dict[str, Any]:
        return exchange_password(settings.token, await _body(request, MAX_LOGIN_FORM_BYTES))

    @app.get("/auth/token/valid", dependencies=auth)
    async def valid_token() -> dict[str, Any]:
        return {"username": "token", "email": None, "name": "holder of the server's token", "roles": ["user"]}

    @app.get("/info/", dependencies=auth)
    def info() -> dict[str, Any]:
        cards = [services.models.get(model.id).card for model in services.models.describe()]
        return app_info(cards, len(services.images), API_VERSION)

    @app.put("/datastore/", dependencies=auth)
    async def upload_image(request: Request, image: str = "") -> dict[str, Any]:
        with upload_gate.slot():  # taken before a byte of the body is read
            parts = await _form(request, settings.max_request_bytes)
            upload = _one_file(parts, "file")
            name = image or _stem(upload.filename)
            await run_in_threadpool(service.upload_to_datastore, name, upload)
        return {"image": name}

    @app.put("/session/", dependencies=auth)
    async def create_session(request: Request, expiry: int = 0) -> dict[str, Any]:
        with upload_gate.slot():
            parts = await _form(request, settings.max_request_bytes)
            image_id = await run_in_threadpool(service.store_upload, _one_file(parts, "files"))
        session = service.sessions.add(image_id, expiry)
        return {"session_id": session.id, "session_info": session.to_json()}

    @app.get("/session/{session_id}", dependencies=auth)
    def get_session(session_id: str, update_ts: bool = False, image: bool = False) -> dict[str, Any]:
        if image:
            raise _not_served("downloading a session's image")
        return service.session(session_id, touch=update_ts).to_json()

    @app.delete("/session/{session_id}", dependencies=auth)
    def remove_session(session_id: str) -> dict[str, Any]:
        return service.sessions.remove(session_id).to_json()

    @app.post("/infer/{model}", dependencies=auth)
    async def infer(request: Request, model: str, image: str = "", session_id: str = "",
                    output: str = "all") -> Response:
        if output not in ("all", "image", "json"):
            raise _not_served(f"inference output {output!r}")
        model, automatic = service.resolve_model(model)  # an unknown model is 404 before anything else
        params = _params(await _form(request, MAX_JSON_BODY_BYTES))
        image_id = service.image_id(image, session_id)
        volume = service.volume(image_id)
        extension = result_extension(params)
        if automatic:
            job = await run_in_threadpool(service.start_job, model, image_id, params)
            await _finished(job, request, service)
            labels, names = await run_in_threadpool(service.job_labels, job)
        else:
            with model_gate.slot():
                labels, names = await run_in_threadpool(service.click_mask, model, image_id, params)
        filename, data = await run_in_threadpool(label_file, volume, labels, extension)
        return _result(output, {"label_names": names, "model": model}, filename, data)

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"], dependencies=auth)
    def not_served(path: str) -> None:
        first = path.split("/", 1)[0]
        if first == "infer" and path.startswith("infer/wsi/"):
            first = "wsi"
        if first in NOT_SERVED:
            raise _not_served(NOT_SERVED[first])
        raise HTTPException(404, f"no MONAI Label route /{path} here; this server answers /info/, /datastore/, "
                                 "/session/ and /infer/{model}")

    return app


async def _body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"request body of {declared} bytes is larger than this route's limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"request body is larger than this route's limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request, max_bytes: int) -> list[FormPart]:
    return parse_form(await _body(request, max_bytes), request.headers.get("content-type"))


def _one_file(parts: list[FormPart], field: str) -> FormPart:
    files = [part for part in parts if part.name == field and part.filename is not None]
    if len(files) != 1:
        raise BadInput(f"send exactly one volume file in form field {field!r} (got {len(files)}); a DICOM series "
                       "must be loaded in Slicer first, which then uploads it as one volume")
    return files[0]


def _stem(filename: str | None) -> str:
    name = Path(filename or "image").name
    return name.split(".", 1)[0] or "image"


def _params(parts: list[FormPart]) -> dict[str, Any]:
    """The ``params`` JSON object of an inference form (``{}`` when absent, as in MONAI Label)."""
    extra = sorted({part.name for part in parts if part.filename is not None})
    if extra:
        raise BadInput(f"inference takes no file (got {', '.join(extra)}): upload the image first, and scribbles "
                       "are not served here")
    texts = [part.text() for part in parts if part.name == "params"]
    if not texts:
        return {}
    try:
        params = json.loads(texts[0])
    except (ValueError, RecursionError) as error:
        raise Invalid(f"params is not valid JSON: {describe_json_error(error)}") from error
    if not isinstance(params, dict):
        raise Invalid(f"params must be a JSON object, got {type(params).__name__}")
    return params


async def _finished(job: Job, request: Request, service: MonaiLabelService) -> None:
    """Wait for ``job`` to end; cancel it when the client hangs up first (nobody would read the result)."""
    while job.state not in FINISHED:
        if await request.is_disconnected():
            service.services.jobs.cancel(job.id)
            raise BadInput(f"the client closed the connection: job {job.id} was cancelled")
        await asyncio.sleep(JOB_POLL_S)


def _result(output: str, params: dict[str, Any], filename: str, data: bytes) -> Response:
    if output == "json":
        return JSONResponse(params)
    if output == "image":
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    content_type, body = encode_form([("params", None, "application/json", json.dumps(params).encode()),
                                      ("image", filename, "application/octet-stream", data)])
    return Response(body, media_type=content_type)


def _not_served(what: str) -> HTTPException:
    return HTTPException(501, f"{what} is not served: this server (tsfm-backend) offers MONAI Label's inference "
                              "only (automatic segmentation and clicks); train and store labels with its own tools")
