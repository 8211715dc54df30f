"""How each application of the server answers a failure: one JSON object, ``{key: message}``, and a status.

``/v1`` answers ``{"error": ...}``; the plugins' protocols answer ``{"detail": ...}``, the format their
clients show to the user. The statuses are the same everywhere: a ``ServiceError``'s own (503 with
Retry-After at capacity), 422 for a body of the wrong shape, an HTTPException's, and 500 for anything
unexpected, whose traceback stays in the server log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tsfm_backend.server.errors import Busy, ServiceError
from tsfm_backend.server.services import describe_validation

log = logging.getLogger(__name__)


def error_response(key: str, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({key: message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, key: str, statuses: Mapping[type[Exception], int] | None = None) -> None:
    """Answer every failure of ``app`` as ``{key: message}``.

    Args:
        statuses: the protocol's own exceptions and their status (a subclass may have its own entry:
            the most specific class present wins).
    """

    async def service_error(_: Request, error: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after_s)} if isinstance(error, Busy) else None
        return error_response(key, error.status, error.message, headers)

    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(key, 422, describe_validation(list(error.errors())))

    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return error_response(key, error.status_code, str(error.detail), getattr(error, "headers", None))

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return error_response(key, 500, f"internal server error ({type(error).__name__}); see the server log")

    app.add_exception_handler(ServiceError, service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
    for exception, status in (statuses or {}).items():
        app.add_exception_handler(exception, _answer_with(key, status))


def _answer_with(key: str, status: int):  # noqa: ANN202 - a Starlette exception handler
    async def handler(_: Request, error: Exception) -> JSONResponse:
        return error_response(key, status, str(error))

    return handler
