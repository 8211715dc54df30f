"""``PrefixMount``: which application a request reaches, and the scope it gets, as ``starlette.routing.Mount`` gives."""

from __future__ import annotations

import asyncio

import pytest
from tsfm_backend.server.mounts import PrefixMount


class Recorder:
    """An ASGI application that keeps the scopes it was called with."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        self.scopes.append(scope)


def routed(path: str, root_path: str = "", kind: str = "http") -> tuple[str, dict]:
    """(which application got the request, the scope it got) for one request through a mount at /plugin."""
    main, plugin = Recorder(), Recorder()
    scope = {"type": kind, "path": path, "root_path": root_path} if kind != "lifespan" else {"type": kind}
    asyncio.run(PrefixMount(main, "/plugin", plugin)(scope, None, None))
    (name, scopes), = [(name, app.scopes) for name, app in (("main", main), ("plugin", plugin)) if app.scopes]
    return name, scopes[0]


@pytest.mark.parametrize("path", ["/plugin", "/plugin/", "/plugin/info/"])
def test_paths_under_the_prefix_reach_the_plugin_with_the_prefix_in_root_path(path: str) -> None:
    name, scope = routed(path)
    assert name == "plugin"
    assert (scope["path"], scope["root_path"], scope["app_root_path"]) == (path, "/plugin", "")


@pytest.mark.parametrize("path", ["/pluginx", "/v1/health", "/", "/v1/plugin/info"])
def test_other_paths_reach_the_main_application_unchanged(path: str) -> None:
    assert routed(path) == ("main", {"type": "http", "path": path, "root_path": ""})


def test_behind_a_root_path_the_prefix_follows_it() -> None:
    name, scope = routed("/proxy/plugin/info/", root_path="/proxy")
    assert name == "plugin" and scope["root_path"] == "/proxy/plugin" and scope["app_root_path"] == "/proxy"
    assert routed("/proxy/v1/info", root_path="/proxy")[0] == "main"


def test_lifespan_events_stay_with_the_main_application() -> None:
    assert routed("", kind="lifespan")[0] == "main"


@pytest.mark.parametrize("prefix", ["plugin", "/plugin/", ""])
def test_a_malformed_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        PrefixMount(Recorder(), prefix, Recorder())
