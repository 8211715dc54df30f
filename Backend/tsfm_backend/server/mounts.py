"""Serving another protocol's application under a path prefix of the ``/v1`` application.

Why not Starlette's ``app.mount``: a mounted application sits behind every middleware of the main
one, ``/v1``'s ``BodySizeLimit`` included, which lets only TSFM frames be large and stops every
other body at 1 MiB. The plugins' protocols upload volumes in their own formats (nnInteractive's
``application/octet-stream`` arrays, MONAI Label's ``multipart/form-data`` files), which that limit
would refuse, and each protocol answers in its own error format. ``PrefixMount`` is therefore added
as middleware *after* the body limit, so it runs first: requests under the prefix go straight to the
protocol's application, which sets its own limits; all others go on to ``/v1``. The scope it passes
on is the one ``starlette.routing.Mount`` would: the same path, the prefix added to ``root_path``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class PrefixMount:
    """ASGI middleware: requests whose path is under ``prefix`` go to ``target``, all others to ``app``.

    Args:
        app: the application this middleware wraps (``/v1`` and its other middleware).
        prefix: "/name", without a trailing slash; "/name" itself and "/name/..." are the target's.
        target: the protocol's own application, with its own body limits and error format.
    """

    def __init__(self, app: ASGIApp, prefix: str, target: ASGIApp) -> None:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"a mount prefix starts with '/' and does not end with one, got {prefix!r}")
        self.app, self.prefix, self.target = app, prefix, target

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            root_path = scope.get("root_path", "")
            path = scope["path"]
            route_path = path[len(root_path):] if root_path and path.startswith(root_path) else path
            if route_path == self.prefix or route_path.startswith(self.prefix + "/"):
                child = dict(scope, root_path=root_path + self.prefix,
                             app_root_path=scope.get("app_root_path", root_path))
                await self.target(child, receive, send)
                return
        await self.app(scope, receive, send)
