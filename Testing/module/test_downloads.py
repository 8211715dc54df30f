"""The module's download logic (Qt-free) through its HTTP client against a real backend on loopback.

The backend's catalog ($TSFM_CATALOG) points at a real loopback file server holding a tiny real model;
the backend starts with no model, so what ``client.models()`` lists afterwards came by download.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from support.file_server import MODEL_FILES, FileServer, catalog_entry, catalog_files, write_catalog
from support.live_server import MODULE_DIR, ThreadedServer, backend_app

sys.path.insert(0, str(MODULE_DIR))

from TSFMSegmentationLib.client import BackendClient, BackendError, NotFound  # noqa: E402
from TSFMSegmentationLib.logic_downloads import (  # noqa: E402
    DownloadProgress,
    ModelDownload,
    entry_label,
    format_bytes,
    needs_license_acceptance,
    offered_models,
    progress_of,
)


@pytest.fixture
def client(tmp_path: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 - BackendClient
    entries = [
        catalog_entry("tiny-download", catalog_files(files, MODEL_FILES), title="Tiny STU-Net"),
        catalog_entry("manual-model", [{"name": "w.pt", "url": None}], notes="Ask the authors for the file."),
        catalog_entry("nc-model", catalog_files(files, MODEL_FILES), license="CC-BY-NC-ND-4.0",
                      redistributable=False),
        catalog_entry("tampered-model", catalog_files(files, MODEL_FILES, sha256={"model.safetensors": "0f" * 32})),
    ]
    monkeypatch.setenv("TSFM_CATALOG", str(write_catalog(tmp_path / "catalog.json", entries)))
    app, _ = backend_app([])
    with ThreadedServer(app) as server:
        client = BackendClient(server.url)
        yield client
        client.close()


def _served(client: BackendClient) -> list[str]:
    return [model["id"] for model in client.models()]


def test_a_catalog_model_downloads_with_progress_and_is_then_served(client: BackendClient) -> None:
    offered = offered_models(client.catalog())
    assert [e["id"] for e in offered] == ["tiny-download", "nc-model", "tampered-model"]
    assert entry_label(offered[0]).startswith("Tiny STU-Net (420.") and entry_label(offered[0]).endswith(
        " kB, Apache-2.0)")
    assert [needs_license_acceptance(e) for e in offered] == [False, True, False]
    assert _served(client) == []

    download = ModelDownload(client, "tiny-download")
    download_id = download.start()
    assert len(download_id) == 32 and not download.status.finished
    seen: list[DownloadProgress] = []
    final = download.wait(poll_s=0.02, timeout_s=60, on_progress=seen.append)
    assert final.succeeded and final.finished and final.fraction == 1.0, final
    assert final.message == "tiny-download is installed and served"
    fractions = [status.fraction for status in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(f < 1.0 for status, f in zip(seen, fractions, strict=True) if not status.finished)
    assert _served(client) == ["tiny-download"]
    assert [e["id"] for e in offered_models(client.catalog())] == ["nc-model", "tampered-model"]
    download.cancel()  # finished: nothing to cancel, no request that could fail
    assert download.status.succeeded


def test_cancel_midway_ends_cancelled_and_nothing_is_served(client: BackendClient, files: FileServer) -> None:
    files.throttle(chunk_bytes=4096, delay_s=0.025)
    download = ModelDownload(client, "tiny-download")
    download.start()
    deadline = time.monotonic() + 30
    while download.poll().fraction == 0.0:
        assert time.monotonic() < deadline and not download.status.finished, download.status
        time.sleep(0.02)
    download.cancel()
    final = download.wait(poll_s=0.02, timeout_s=30)
    assert final.state == "cancelled" and not final.succeeded, final
    assert 0.0 < final.fraction < 1.0 and "cancelled after" in final.message
    assert _served(client) == []
    assert "tiny-download" in [e["id"] for e in offered_models(client.catalog())]


def test_unknown_manual_and_licensed_models_give_errors_a_user_can_act_on(client: BackendClient) -> None:
    with pytest.raises(NotFound, match="'nope' is not in the model catalog; known: tiny-download, manual-model"):
        ModelDownload(client, "nope").start()
    with pytest.raises(BackendError, match=r"409 .*no direct link.*tsfm-backend import FILE --id manual-model") as info:
        ModelDownload(client, "manual-model").start()
    assert info.value.status == 409
    with pytest.raises(BackendError, match="CC-BY-NC-ND-4.0.*accept_license"):
        ModelDownload(client, "nc-model").start()
    accepted = ModelDownload(client, "nc-model", accept_license=True)
    accepted.start()
    assert accepted.wait(poll_s=0.02, timeout_s=60).succeeded
    with pytest.raises(BackendError, match="already installed and served"):
        ModelDownload(client, "nc-model").start()
    with pytest.raises(BackendError, match="call start"):
        ModelDownload(client, "tiny-download").poll()


def test_a_wrong_sha256_ends_failed_naming_the_mismatch(client: BackendClient) -> None:
    download = ModelDownload(client, "tampered-model")
    download.start()
    final = download.wait(poll_s=0.02, timeout_s=60)
    assert final.state == "failed" and final.finished and not final.succeeded
    assert "SHA-256" in final.message and final.message.endswith("does not match the expected " + "0f" * 32)
    assert _served(client) == []


def test_progress_and_labels_without_a_server() -> None:
    assert progress_of({"state": "running", "bytes_done": 50, "bytes_total": 200, "message": "m"}).fraction == 0.25
    assert progress_of({"state": "running", "bytes_done": 200, "bytes_total": 200, "message": ""}).fraction == 0.99
    assert progress_of({"state": "running", "bytes_done": 9, "bytes_total": None, "message": ""}).fraction == 0.0
    assert progress_of({"state": "done", "bytes_done": 0, "bytes_total": None, "message": ""}).fraction == 1.0
    assert [format_bytes(n) for n in (512, 1_500, 2_500_000, 3_200_000_000)] == [
        "512 B", "1.5 kB", "2.5 MB", "3.2 GB"]
    entry = {"id": "m", "title": "M", "license": "MIT", "size_bytes": None, "installed": True}
    assert entry_label(entry) == "M (installed, MIT)" and entry_label({"id": "m"}) == "m (license unknown)"
