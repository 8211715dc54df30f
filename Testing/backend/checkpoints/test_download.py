"""Resumable, hash-checked downloads and `tsfm-backend fetch` against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.file_server import FileServer
from support.official_checkpoints import stunet_for, write_v1_checkpoint
from tsfm_backend.checkpoints import load_model
from tsfm_backend.cli import main
from tsfm_backend.download import DownloadCancelled, DownloadError, download


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    with FileServer(root) as httpd:
        yield httpd


def ranges(server: FileServer) -> list[str | None]:
    return [header for _path, header in server.requests]


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB
    (server.root / "weights.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    destination = tmp_path / "out" / "weights.bin"
    server.cut_after = 300_000
    with pytest.raises(DownloadError, match="interrupted after 300000 bytes.*run again to resume"):
        download(f"{server.url}/weights.bin", destination, size=len(payload), sha256=digest, progress=False)
    partial = destination.with_name("weights.bin.partial")
    assert partial.stat().st_size == 300_000 and not destination.exists()

    got = download(f"{server.url}/weights.bin", destination, size=len(payload), sha256=digest, progress=False)
    assert got == destination and got.read_bytes() == payload
    assert ranges(server) == [None, "bytes=300000-"]
    assert not partial.exists()
    # Already there and verified: no request at all.
    download(f"{server.url}/weights.bin", destination, size=len(payload), sha256=digest, progress=False)
    assert len(ranges(server)) == 2


def test_wrong_hash_is_refused_and_nothing_is_kept(server, tmp_path):
    (server.root / "w.bin").write_bytes(b"tampered weights")
    destination = tmp_path / "w.bin"
    with pytest.raises(DownloadError, match="SHA-256 .* does not match the expected 00ff"):
        download(f"{server.url}/w.bin", destination, sha256="00ff" * 16, progress=False)
    assert not destination.exists() and not destination.with_name("w.bin.partial").exists()


def test_missing_file_and_unreachable_server_are_clear(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/nope.bin", tmp_path / "x", progress=False)
    with pytest.raises(DownloadError, match="cannot connect"):
        download("http://127.0.0.1:9/x.bin", tmp_path / "x", progress=False, timeout=2)


def _catalog(tmp_path, server, entries) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"format_version": 1, "models": entries}))
    return path


def _entry(model_id, files, **overrides):
    return {"id": model_id, "title": "test model", "family": "stunet", "format": "nnunet_v1", "kind": "automatic",
            "license": "Apache-2.0", "redistributable": True, "homepage": "https://example.org", "files": files,
            **overrides}


def test_fetch_downloads_checks_and_installs(server, tmp_path, shared_data, monkeypatch, capsys):
    pools = [[2, 2, 2]] * 4 + [[1, 1, 2]]
    write_v1_checkpoint(server.root / "small_ep4k.model", stunet_for("tiny", 105, pools))
    plans = (shared_data / "stunet" / "small_ep4k.model.pkl").read_bytes()
    (server.root / "small_ep4k.model.pkl").write_bytes(plans)
    files = [
        {"name": "small_ep4k.model", "url": f"{server.url}/small_ep4k.model"},
        {"name": "small_ep4k.model.pkl", "url": f"{server.url}/small_ep4k.model.pkl", "size": len(plans),
         "sha256": hashlib.sha256(plans).hexdigest()},
    ]
    monkeypatch.setenv("TSFM_CATALOG", str(_catalog(tmp_path, server, [_entry("stunet-test", files)])))
    assert main(["fetch", "stunet-test"]) == 0
    out = capsys.readouterr().out
    assert "fetched 'stunet-test'" in out and "format:        nnunet_v1" in out and "preset:        tiny" in out
    loaded = load_model("stunet-test")
    assert loaded.card.license == "Apache-2.0" and loaded.card.provenance["catalog_id"] == "stunet-test"
    assert main(["models"]) == 0
    installed = capsys.readouterr().out.split("Catalog:")[0]
    assert [line.split()[0] + " " + line.split()[-1] for line in installed.splitlines()[1:] if line.strip()] == [
        "sts-click-small bundled", "stunet-test store", "universal-click-small bundled"]
    assert main(["fetch", "stunet-test"]) == 2
    assert "already installed" in capsys.readouterr().err


def test_fetch_needs_license_acceptance_for_non_redistributable_weights(server, tmp_path, monkeypatch, capsys):
    entry = _entry("nc-model", [{"name": "w.pth", "url": f"{server.url}/w.pth"}],
                   license="CC-BY-NC-ND-4.0", redistributable=False)
    manual = _entry("manual-model", [{"name": "w.pt", "url": None}], notes="Get it from the authors.")
    monkeypatch.setenv("TSFM_CATALOG", str(_catalog(tmp_path, server, [entry, manual])))
    assert main(["fetch", "nc-model"]) == 2
    assert "CC-BY-NC-ND-4.0" in capsys.readouterr().err and ranges(server) == []
    assert main(["fetch", "manual-model"]) == 2
    assert "no direct download. Get it from the authors." in capsys.readouterr().err
    assert main(["fetch", "nope"]) == 2
    assert "not in the model catalog" in capsys.readouterr().err


def test_bundled_catalog_lists_the_official_models_and_bundles_nothing_restricted():
    from tsfm_backend.catalog import load_catalog
    from tsfm_backend.store import BUNDLED_MODELS

    entries = {e.id: e for e in load_catalog()}
    assert {"stunet-totalseg-base", "misfm-pctnet-ct10k", "suprem-unet", "3dsam-adapter-kits"} <= set(entries)
    assert entries["suprem-unet"].license == "CC-BY-NC-ND-4.0" and not entries["suprem-unet"].redistributable
    bundled = {p.name for p in BUNDLED_MODELS.iterdir()} if BUNDLED_MODELS.is_dir() else set()
    assert not bundled & {e.id for e in entries.values() if not e.redistributable}


def test_progress_is_reported_per_chunk_and_should_stop_keeps_the_partial_file(server, tmp_path):
    payload = bytes(range(256)) * 8192  # 2 MiB: more than one chunk (at most 1 MiB) whatever the socket holds
    (server.root / "w.bin").write_bytes(payload)
    destination = tmp_path / "w.bin"
    seen: list[tuple[int, int | None]] = []

    def stop_after_first_chunk() -> bool:
        return len(seen) > 1

    with pytest.raises(DownloadCancelled, match=r"cancelled after \d+ bytes; the partial file is kept to resume"):
        download(f"{server.url}/w.bin", destination, size=len(payload), progress=False,
                 on_progress=lambda done, total: seen.append((done, total)), should_stop=stop_after_first_chunk)
    kept = destination.with_name("w.bin.partial").stat().st_size
    assert seen[0] == (0, len(payload)) and 0 < kept < len(payload) and not destination.exists()

    seen.clear()
    download(f"{server.url}/w.bin", destination, size=len(payload), progress=False,
             on_progress=lambda done, total: seen.append((done, total)))
    assert destination.read_bytes() == payload and ranges(server)[-1] == f"bytes={kept}-"
    assert seen[0] == (kept, len(payload)) and seen[-1] == (len(payload), len(payload))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
