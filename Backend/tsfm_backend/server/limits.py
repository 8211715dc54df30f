"""Request limits: body size (plain ASGI middleware, so it works on any FastAPI/Starlette version) and
gates that bound how many requests of a kind are in progress at once.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read; a body
sent without one (chunked) is counted as it streams in and refused when it crosses the limit.
Either way the answer is 413 with ``{"error": message}`` (a protocol's own ``error_key`` for the
plugins' applications). Bodies of one media type, TSFM frames (``application/vnd.tsfm.frame``) for
``/v1``, may be as large as ``max_bytes``; any other body (JSON) at most ``max_other_bytes``, which
bounds what a JSON parser is ever handed.

A ``Gate`` holds at most ``size`` requests; one more is answered 503 with Retry-After at once,
before its body is read, instead of waiting for a thread of the server's pool.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tsfm_backend.server.errors import Busy

FRAME_MEDIA_TYPE = b"application/vnd.tsfm.frame"
MAX_JSON_BODY_BYTES = 1 << 20


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` inside a route; FastAPI's error handlers turn it into a 413."""

    def __init__(self, max_bytes: int, what: str = "request body") -> None:
        super().__init__(413, f"{what} is larger than the server's limit of {max_bytes} bytes")


class BodySizeLimit:
    """Refuse HTTP request bodies larger than ``max_bytes`` (frames) or ``max_other_bytes`` (others) with 413.

    Args:
        large_media_type: the one media type that may reach ``max_bytes``; ``large_name`` names it to the user.
        error_key: the key of the refusal's JSON object (the protocol's error format).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, max_other_bytes: int = MAX_JSON_BODY_BYTES,
                 large_media_type: bytes = FRAME_MEDIA_TYPE, large_name: str = "a frame",
                 error_key: str = "error") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_other_bytes = min(max_other_bytes, max_bytes)
        self.large_media_type, self.error_key = large_media_type, error_key
        self.other_what = f"request body that is not {large_name} ({large_media_type.decode()})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _content_type(scope) == self.large_media_type:
            limit, what = self.max_bytes, "request body"
        else:
            limit, what = self.max_other_bytes, self.other_what
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, self.error_key, BodyTooLarge(limit, what).detail)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, what)
            return message

        await self.app(scope, counted_receive, send)


class Gate:
    """At most ``size`` requests of one kind in progress; one more raises ``Busy`` (503 + Retry-After) at once.

    Args:
        size: how many may hold the gate together.
        what: the requests in the refusal message ("model requests", "uploads").
        retry_after_s: the Retry-After value of the refusal.
    """

    def __init__(self, size: int, what: str, retry_after_s: int = 2) -> None:
        self.size, self.what, self.retry_after_s = size, what, retry_after_s
        self._held = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._held >= self.size:
                raise Busy(f"the server is already handling its maximum of {self.size} {self.what} at once; "
                           "try again shortly", self.retry_after_s)
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1

    @property
    def held(self) -> int:
        with self._lock:
            return self._held


def _content_type(scope: Scope) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.split(b";")[0].strip().lower()
    return b""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, error_key: str, message: str) -> None:
    body = json.dumps({error_key: message}).encode("utf-8")
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
