"""MONAI Label's auth routes over the server's one bearer token.

Before every action the plugin asks ``GET /auth/`` (without credentials). Where ``enabled`` is true it
shows a login dialog once, posts the user name and password as an OAuth2 password form to
``POST /auth/token`` and then sends ``Authorization: <token_type> <access_token>`` on every request,
checking it first with ``GET /auth/token/valid``. Here the password is the server's ``--token``: the
answer hands that same token back as a ``Bearer`` token, so the plugin then authenticates exactly as
every ``/v1`` client does. The user name is not checked (there are no accounts).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException

from tsfm_backend.server.bearer import same_secret

CLIENT_ID = "tsfm-backend"
MAX_LOGIN_FORM_BYTES = 16 * 1024
# What the plugin shows for a request without the token or with another (``server.bearer.bearer_check``).
WRONG_TOKEN = ("missing or wrong token: log in with the server's token as the password "
               "(or send 'Authorization: Bearer <token>')")


def auth_status(token: str | None) -> dict[str, Any]:
    """``GET /auth/``: whether the plugin must log in (the password is the server's token)."""
    return {"enabled": token is not None, "client_id": CLIENT_ID, "realm": ""}


def exchange_password(token: str | None, form: bytes) -> dict[str, Any]:
    """``POST /auth/token``: the bearer token for a login form whose password is the server's token.

    Raises HTTPException 401 for another password, 400 for a form that is not one.
    """
    if token is None:
        return {"access_token": None, "token_type": None}  # what MONAI Label answers with auth disabled
    try:
        fields = parse_qs(form.decode("utf-8"), max_num_fields=16, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as error:
        raise HTTPException(400, "the login body must be a form: username=...&password=...") from error
    password = (fields.get("password") or [""])[0]
    if not same_secret(password, token):
        raise HTTPException(401, "wrong password: type the server's token (tsfm-backend serve --token) as the "
                                 "password", headers={"WWW-Authenticate": "Bearer"})
    return {"access_token": token, "token_type": "Bearer"}
