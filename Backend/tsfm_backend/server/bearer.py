"""The server's one secret, its ``--token``, checked the same way by ``/v1`` and the plugins' protocols."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Header
from starlette.exceptions import HTTPException


def same_secret(supplied: str, token: str) -> bool:
    # compare_digest takes the same time wherever the first differing byte is.
    return hmac.compare_digest(supplied.encode("utf-8"), token.encode("utf-8"))


def bearer_check(token: str | None, wrong: str, missing: str | None = None):  # noqa: ANN201 - a FastAPI dependency
    """A dependency that answers 401 unless the request carries ``Authorization: Bearer <token>``.

    Args:
        token: the server's token; None lets every request through.
        wrong: the message for a wrong token (and for a missing one unless ``missing`` is given).
        missing: the message for a request without a bearer token.
    """

    async def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        scheme, _, supplied = (authorization or "").partition(" ")
        supplied = supplied.strip()
        if scheme.lower() != "bearer" or not supplied:
            raise HTTPException(401, missing or wrong, headers={"WWW-Authenticate": "Bearer"})
        if not same_secret(supplied, token):
            raise HTTPException(401, wrong, headers={"WWW-Authenticate": "Bearer"})

    return require_token
