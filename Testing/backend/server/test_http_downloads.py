"""Model downloads over /v1 on a real uvicorn server: catalog, progress, cancel and resume, errors.

The catalog ($TSFM_CATALOG) points at a real HTTP file server on loopback that serves a tiny real
model (weights + card); nothing leaves the machine. The server starts with no model at all, so
everything ``GET /v1/models`` lists afterwards came through a download.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from support.file_server import MODEL_FILES, FileServer, catalog_entry, catalog_files, write_catalog
from support.live_server import TEST_TOKEN as TOKEN
from support.live_server import ThreadedServer, backend_app
from support.tiny_models import save_tiny_model
from tsfm_backend.formats import ours
from tsfm_backend.store import downloads_dir, install_dir

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def catalog(tmp_path: Path, files: FileServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    entries = [
        catalog_entry("tiny-download", catalog_files(files, MODEL_FILES)),
        catalog_entry("manual-model", [{"name": "w.pt", "url": None}], notes="Ask the authors for the file."),
        catalog_entry("nc-model", catalog_files(files, MODEL_FILES), license="CC-BY-NC-ND-4.0",
                      redistributable=False),
        catalog_entry("tampered-model", catalog_files(files, MODEL_FILES, sha256={"model.safetensors": "0f" * 32})),
    ]
    path = write_catalog(tmp_path / "catalog.json", entries)
    monkeypatch.setenv("TSFM_CATALOG", str(path))
    return path


@pytest.fixture
def live(catalog: Path):  # noqa: ANN201 - ThreadedServer serving no model yet
    app, services = backend_app([], token=TOKEN)
    with ThreadedServer(app) as server:
        server.services = services
        yield server


def _get(live: ThreadedServer, path: str) -> requests.Response:
    return requests.get(live.url + path, headers=AUTH, timeout=10)


def _post_download(live: ThreadedServer, body: dict) -> requests.Response:
    return requests.post(live.url + "/v1/downloads", json=body, headers=AUTH, timeout=10)


def _follow(live: ThreadedServer, download_id: str, timeout_s: float = 60.0) -> list[dict]:
    """Every status seen until the download finished, the last one finished."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _get(live, f"/v1/downloads/{download_id}").json()
        seen.append(status)
        if status["state"] in ("done", "failed", "cancelled"):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"download {download_id} did not finish in {timeout_s} s: {seen[-1]}")


def _served(live: ThreadedServer) -> list[str]:
    return [model["id"] for model in _get(live, "/v1/models").json()]


def test_catalog_lists_the_entries_with_size_license_and_state(live: ThreadedServer, files: FileServer) -> None:
    answer = _get(live, "/v1/catalog")
    assert answer.status_code == 200
    entries = {entry["id"]: entry for entry in answer.json()}
    assert list(entries) == ["tiny-download", "manual-model", "nc-model", "tampered-model"]
    size = sum((files.root / name).stat().st_size for name in MODEL_FILES)
    assert entries["tiny-download"] == {
        "id": "tiny-download", "title": "tiny-download for tests", "kind": "automatic", "family": "stunet",
        "license": "Apache-2.0", "redistributable": True, "homepage": "https://example.org/models", "notes": "",
        "size_bytes": size, "downloadable": True, "installed": False, "served": False,
    }
    assert entries["manual-model"]["downloadable"] is False and entries["manual-model"]["size_bytes"] is None
    assert entries["nc-model"]["redistributable"] is False
    assert files.requests == [], "listing the catalog downloads nothing"


def test_download_reports_progress_installs_and_serves_without_a_restart(live: ThreadedServer) -> None:
    assert _served(live) == []
    answer = _post_download(live, {"model": "tiny-download"})
    assert answer.status_code == 202
    started = answer.json()
    assert started["model"] == "tiny-download" and started["state"] in ("queued", "running")
    seen = _follow(live, started["download_id"])
    final = seen[-1]
    assert final["state"] == "done", final
    assert final["bytes_done"] == final["bytes_total"] > 400_000
    assert final["message"] == "tiny-download is installed and served" and final["seconds"] > 0
    done = [status["bytes_done"] for status in seen]
    assert done == sorted(done)
    assert _served(live) == ["tiny-download"]
    model = next(m for m in _get(live, "/v1/models").json() if m["id"] == "tiny-download")
    assert model["kind"] == "automatic" and model["license"] == "Apache-2.0"
    assert ours.detect(install_dir("tiny-download"))
    assert "tiny-download" in _get(live, "/v1/info").json()["models"]
    entry = next(e for e in _get(live, "/v1/catalog").json() if e["id"] == "tiny-download")
    assert entry["installed"] is True and entry["served"] is True
    again = _post_download(live, {"model": "tiny-download"})
    assert again.status_code == 409 and "already installed and served" in again.json()["error"]


def test_cancel_midway_keeps_the_partial_file_installs_nothing_and_a_new_download_resumes(
        live: ThreadedServer, files: FileServer) -> None:
    files.throttle(chunk_bytes=4096, delay_s=0.025)  # about 160 KB/s: the 420 KB weights take seconds
    download_id = _post_download(live, {"model": "tiny-download"}).json()["download_id"]
    deadline = time.monotonic() + 30
    while _get(live, f"/v1/downloads/{download_id}").json()["bytes_done"] == 0:
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.02)
    cancel = requests.delete(f"{live.url}/v1/downloads/{download_id}", headers=AUTH, timeout=10)
    assert cancel.status_code == 202 and cancel.json()["download_id"] == download_id
    final = _follow(live, download_id)[-1]
    assert final["state"] == "cancelled", final
    assert "cancelled after" in final["message"] and "kept to resume" in final["message"]
    assert 0 < final["bytes_done"] < final["bytes_total"]
    assert _served(live) == [] and not install_dir("tiny-download").exists()
    partial = downloads_dir() / "tiny-download" / "model.safetensors.partial"
    kept = partial.stat().st_size
    assert 0 < kept < (files.root / "model.safetensors").stat().st_size

    files.throttle(chunk_bytes=64 << 10, delay_s=0.0)
    resumed = _post_download(live, {"model": "tiny-download"}).json()
    assert resumed["download_id"] != download_id
    assert _follow(live, resumed["download_id"])[-1]["state"] == "done"
    assert ("/model.safetensors", f"bytes={kept}-") in files.requests
    assert _served(live) == ["tiny-download"] and not partial.exists()


def test_the_same_model_twice_is_one_download(live: ThreadedServer, files: FileServer) -> None:
    files.throttle(chunk_bytes=4096, delay_s=0.025)
    first = _post_download(live, {"model": "tiny-download"})
    second = _post_download(live, {"model": "tiny-download"})
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["download_id"] == first.json()["download_id"]
    download_id = first.json()["download_id"]
    requests.delete(f"{live.url}/v1/downloads/{download_id}", headers=AUTH, timeout=10)
    assert _follow(live, download_id)[-1]["state"] == "cancelled"
    assert sum(path == "/model.safetensors" for path, _ in files.requests) <= 1


def test_unknown_manual_and_unaccepted_license_models_are_refused_clearly(live: ThreadedServer,
                                                                          files: FileServer) -> None:
    unknown = _post_download(live, {"model": "no-such-model"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == ("'no-such-model' is not in the model catalog; known: tiny-download, "
                                       "manual-model, nc-model, tampered-model")
    manual = _post_download(live, {"model": "manual-model"})
    assert manual.status_code == 409
    message = manual.json()["error"]
    assert "no direct link" in message and "Ask the authors for the file." in message
    assert "tsfm-backend import FILE --id manual-model" in message
    restricted = _post_download(live, {"model": "nc-model"})
    assert restricted.status_code == 409
    assert "CC-BY-NC-ND-4.0" in restricted.json()["error"] and "accept_license: true" in restricted.json()["error"]
    assert files.requests == []
    accepted = _post_download(live, {"model": "nc-model", "accept_license": True})
    assert accepted.status_code == 202
    assert _follow(live, accepted.json()["download_id"])[-1]["state"] == "done"
    card = next(m for m in _get(live, "/v1/models").json() if m["id"] == "nc-model")
    assert card["license"] == "CC-BY-NC-ND-4.0"


@pytest.mark.parametrize("body", [{}, {"model": "../etc"}, {"model": "tiny-download", "accept_license": "yes"},
                                  {"model": "tiny-download", "path": "/tmp/x"}])
def test_download_requests_that_break_the_schema_are_422(live: ThreadedServer, body: dict) -> None:
    assert _post_download(live, body).status_code == 422


def test_unknown_download_ids_and_missing_token(live: ThreadedServer) -> None:
    missing = _get(live, "/v1/downloads/" + "0" * 32)
    assert missing.status_code == 404 and "download 000" in missing.json()["error"]
    assert _get(live, "/v1/downloads/not-hex").status_code == 422
    assert requests.delete(f"{live.url}/v1/downloads/{'0' * 32}", headers=AUTH, timeout=10).status_code == 404
    for method, path in (("GET", "/v1/catalog"), ("POST", "/v1/downloads"), ("GET", "/v1/downloads/" + "0" * 32),
                         ("DELETE", "/v1/downloads/" + "0" * 32)):
        assert requests.request(method, live.url + path, json={"model": "x"}, timeout=10).status_code == 401


def test_a_wrong_sha256_fails_naming_the_mismatch_and_installs_nothing(live: ThreadedServer) -> None:
    download_id = _post_download(live, {"model": "tampered-model"}).json()["download_id"]
    final = _follow(live, download_id)[-1]
    assert final["state"] == "failed"
    assert final["message"].startswith("download failed: ") and "/model.safetensors: SHA-256 " in final["message"]
    assert final["message"].endswith("does not match the expected " + "0f" * 32)
    assert _served(live) == [] and not install_dir("tampered-model").exists()
    assert not list((downloads_dir() / "tampered-model").glob("model.safetensors*")), "a wrong file is not kept"


def test_a_model_imported_by_hand_is_served_on_request_without_a_download(live: ThreadedServer,
                                                                          files: FileServer) -> None:
    save_tiny_model(install_dir("manual-model"), model_id="manual-model", spacing=None, patch_size=(16, 32, 32))
    entry = next(e for e in _get(live, "/v1/catalog").json() if e["id"] == "manual-model")
    assert entry["installed"] is True and entry["served"] is False
    answer = _post_download(live, {"model": "manual-model"})
    assert answer.status_code == 202
    assert _follow(live, answer.json()["download_id"])[-1]["state"] == "done"
    assert _served(live) == ["manual-model"] and files.requests == []


def test_an_unreadable_catalog_is_a_server_error_naming_the_file(live: ThreadedServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSFM_CATALOG", str(tmp_path / "missing.json"))
    answer = _get(live, "/v1/catalog")
    assert answer.status_code == 500 and "missing.json: cannot read the model catalog" in answer.json()["error"]
