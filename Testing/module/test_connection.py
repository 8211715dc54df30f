"""Backend connection pieces that need no Slicer: URL checks, /v1/info summaries, the bundled backend path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from support.mini_slicer import MODULE_DIR, REPO

sys.path.insert(0, str(MODULE_DIR))

from TSFMSegmentationLib.backend_process import backend_environment, bundled_backend_dirs, can_import_backend  # noqa: E402
from TSFMSegmentationLib.logic_connection import Connection, describe_info, is_loopback, validate_url  # noqa: E402


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
    from TSFMSegmentationLib.client import BackendError

    with pytest.raises(BackendError, match="not connected"):
        Connection().require()


def test_bundled_backend_is_found_and_importable_from_a_source_tree() -> None:
    assert bundled_backend_dirs(MODULE_DIR) == [REPO / "Backend"]
    env = backend_environment(sys.executable)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO / "Backend")
    assert "127.0.0.1" in env["NO_PROXY"]
    assert can_import_backend(sys.executable)
    assert not can_import_backend(str(Path("/nonexistent/python")))
