"""Safe defaults: loopback unless a token (or an explicit --insecure) says otherwise."""

from __future__ import annotations

import logging

import pytest
from tsfm_backend.cli import main
from tsfm_backend.server.settings import Settings, SettingsError, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "localhost", "::1", "[::1]"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    assert Settings(host=host).token is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_other_hosts_need_a_token_or_insecure(host: str, caplog: pytest.LogCaptureFixture) -> None:
    assert not is_loopback(host)
    with pytest.raises(SettingsError, match="--token"):
        Settings(host=host)
    assert Settings(host=host, token="s3cret-token").token == "s3cret-token"
    with caplog.at_level(logging.WARNING):
        Settings(host=host, insecure=True).warn_if_exposed()
    assert "WITHOUT a token" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"token": "short"}, "at least 8"), ({"port": 70000}, "--port"), ({"max_sessions": 0}, "max_sessions"),
     ({"session_idle_s": 0}, "session_idle_s"), ({"host": ""}, "--host")],
)
def test_impossible_settings_name_the_option(overrides: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings(**overrides)


def test_serve_refuses_an_exposed_host_without_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--token" in capsys.readouterr().err
