"""Backend connection pieces that need no Slicer: URL checks, /v1/info summaries, the bundled backend path,
and a local start that the user interrupts (Start pressed again, or Stop) from inside its wait."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from support.mini_slicer import MODULE_DIR, REPO

sys.path.insert(0, str(MODULE_DIR))

from TSFMSegmentationLib.backend_process import (  # noqa: E402
    BackendStartError,
    backend_environment,
    bundled_backend_dirs,
    probe_backend,
)
from TSFMSegmentationLib.client import BackendError  # noqa: E402
from TSFMSegmentationLib.logic_connection import (  # noqa: E402
    LOCAL,
    BackendBusy,
    Connection,
    describe_info,
    is_loopback,
    validate_ca_bundle,
    validate_proxy,
    validate_url,
)

SERVE_ARGS = ["--models", "sts-click-small"]


@pytest.mark.parametrize("url", ["gpu-server:8765", "ftp://host", "http://", "http://host/v1", "http://h:1/?x=1"])
def test_bad_backend_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="backend URL"):
        validate_url(url)


def test_good_backend_urls_are_normalised() -> None:
    assert validate_url(" https://gpu.example.org:8765/ ") == "https://gpu.example.org:8765"
    assert is_loopback("http://127.0.0.1:9000") and is_loopback("http://localhost:1")
    assert not is_loopback("http://10.0.0.5:8765")


def test_info_summary_names_the_gpu_and_warns_only_on_cpu() -> None:
    gpu = {"device": {"type": "cuda", "name": "NVIDIA H100", "memory_gb": 79.1},
           "versions": {"torch": "2.6.0", "tsfm-backend": "0.1.0"}}
    summary, warning = describe_info(gpu)
    assert summary == "NVIDIA H100 (79 GB); torch 2.6.0, tsfm-backend 0.1.0" and warning == ""
    summary, warning = describe_info({"device": {"type": "cpu", "name": "CPU", "threads": 2}, "versions": {}})
    assert summary == "CPU" and "CPU" in warning


def test_upload_to_a_remote_server_is_asked_once_per_url() -> None:
    from TSFMSegmentationLib.client import BackendClient

    asked: list[str] = []
    connection = Connection(confirm_upload=lambda url: asked.append(url) or True)
    connection.mode, connection.client = "remote", BackendClient("http://gpu.example.org:8765")
    connection.check_upload_allowed()
    connection.check_upload_allowed()
    assert asked == ["http://gpu.example.org:8765"]


def test_not_connected_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="not connected"):
        Connection().require()


def test_bundled_backend_is_found_and_importable_from_a_source_tree() -> None:
    assert bundled_backend_dirs(MODULE_DIR) == [REPO / "Backend"]
    env = backend_environment(sys.executable)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO / "Backend")
    assert "127.0.0.1" in env["NO_PROXY"]
    assert probe_backend(sys.executable).ok
    assert not probe_backend(str(Path("/nonexistent/python"))).ok


@pytest.mark.parametrize("proxy", ["proxy.example.org:3128", "socks5://proxy:1080", "http://", "http://proxy:0",
                                   "http://proxy:99999", "http://proxy:3128/path", "http://proxy:3128/?a=1"])
def test_bad_proxies_are_refused(proxy: str) -> None:
    with pytest.raises(ValueError, match="proxy must"):
        validate_proxy(proxy)


def test_good_proxies_are_normalised() -> None:
    assert validate_proxy(" http://proxy.example.org:3128/ ") == "http://proxy.example.org:3128"
    assert validate_proxy("https://user:pw@proxy") == "https://user:pw@proxy"


def test_a_ca_bundle_must_be_an_existing_pem_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an existing file"):
        validate_ca_bundle(str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="not an existing file"):
        validate_ca_bundle(str(tmp_path))
    binary = tmp_path / "ca.cer"
    binary.write_bytes(b"0\x82\x03\x1d0\x82\x02\x05")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        validate_ca_bundle(str(binary))
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert validate_ca_bundle(str(pem)) == str(pem.resolve())


def test_remote_settings_are_checked_before_anything_is_sent(tmp_path: Path) -> None:
    connection = Connection()
    with pytest.raises(ValueError, match="proxy must"):
        connection.connect_remote("http://gpu.example.org:8765", proxy="proxy:3128")
    with pytest.raises(ValueError, match="CA bundle"):
        connection.connect_remote("https://gpu.example.org", ca_bundle=str(tmp_path / "ca.pem"))
    assert connection.client is None


@pytest.mark.skipif(os.name == "nt", reason="uses a POSIX shell script as the interpreter")
def test_start_pressed_again_while_starting_is_refused_and_stop_cancels(tmp_path: Path) -> None:
    never_answers = tmp_path / "python"
    never_answers.write_text("#!/bin/sh\nexec sleep 60\n")
    never_answers.chmod(0o755)
    connection = Connection()
    refused: list[str] = []

    def user_presses_buttons(elapsed: float) -> None:
        for again in (lambda: connection.connect_local(python=sys.executable),
                      lambda: connection.connect_remote("http://127.0.0.1:9")):
            try:
                again()
            except BackendBusy as error:
                refused.append(str(error))
        starting = connection.local
        connection.disconnect()
        assert starting is not None and not starting.is_running()

    with pytest.raises(BackendStartError, match="stopped before it answered"):
        connection.connect_local(python=str(never_answers), timeout_s=30, on_wait=user_presses_buttons)
    assert refused == ["the local backend is already starting: wait until it answers, or stop it first"] * 2
    assert connection.local is None and connection.client is None
    with pytest.raises(BackendStartError, match="cannot run"):  # not BackendBusy: the failed start is over
        connection.connect_local(python=str(tmp_path / "missing-python"))


@pytest.mark.slow
def test_the_backend_being_started_survives_a_second_start(tmp_path: Path) -> None:
    connection = Connection()
    refused: list[BackendBusy] = []

    def user_presses_start_again(elapsed: float) -> None:
        try:
            connection.connect_local(python=sys.executable, device="cpu", extra_args=SERVE_ARGS)
        except BackendBusy as error:
            refused.append(error)

    try:
        info = connection.connect_local(python=sys.executable, device="cpu", timeout_s=120, extra_args=SERVE_ARGS,
                                        env={"TSFM_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
                                        on_wait=user_presses_start_again)
        assert refused, "the wait should have let the second start in"
        assert connection.mode == LOCAL and connection.local.is_running()
        assert info["models"] == ["sts-click-small"] and info["api_version"].startswith("1.")
    finally:
        connection.disconnect()
