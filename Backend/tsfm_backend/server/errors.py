"""Service-level failures, each bound to the HTTP status the app answers with."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the failures a route maps to a 4xx/5xx answer with ``{"error": message}``."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(ServiceError):
    status = 400


class Invalid(ServiceError):
    """A body that parsed but breaks the route's schema (same status as FastAPI's own validation)."""

    status = 422


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    """The request is valid but not now, e.g. the result of a job that is still running."""

    status = 409


class Expired(ServiceError):
    """A session that existed but whose lease ran out; the client creates a new one and re-seeds it."""

    status = 410


class TooLarge(ServiceError):
    status = 413


class Misconfigured(ServiceError):
    """The server's own files are wrong (e.g. an unreadable model catalog); the message names the file."""

    status = 500


class Busy(ServiceError):
    """At capacity; the answer carries ``Retry-After``."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
