"""VISTA3D's catalog entry: non-commercial weights whose licence is never accepted for the user.

Nothing here reaches the network: every refusal happens before the first byte is asked for.
"""

from __future__ import annotations

import time

import pytest
from tsfm_backend.catalog import catalog_entry
from tsfm_backend.catalog_install import LicenseNotAccepted, install_entry
from tsfm_backend.cli import main
from tsfm_backend.server.downloads import DownloadManager
from tsfm_backend.store import downloads_dir


def test_the_catalog_states_what_is_known_of_the_licence():
    entry = catalog_entry("vista3d")
    assert (entry.family, entry.format, entry.kind) == ("vista3d", "vista3d", "automatic")
    assert not entry.redistributable and "non-commercial" in entry.license
    for name in ("NCLS v1", "NVIDIA OneWay Noncommercial License", "3.3", "Apache-2.0"):
        assert name in entry.notes
    assert "could not download" in entry.notes and entry.files[0].sha256 is None


def test_install_refuses_before_downloading_without_acceptance():
    with pytest.raises(LicenseNotAccepted, match=r"non-commercial.*--accept-license.*accept_license: true"):
        install_entry(catalog_entry("vista3d"), progress=False)
    assert not (downloads_dir() / "vista3d").exists()


def test_fetch_without_accept_license_names_the_licence_and_the_flag(capsys):
    assert main(["fetch", "vista3d"]) == 2
    error = capsys.readouterr().err
    assert "non-commercial" in error and "--accept-license" in error
    assert not (downloads_dir() / "vista3d").exists()


def test_a_server_download_not_accepted_fails_before_its_first_byte():
    served = []
    manager = DownloadManager(serve=served.append)
    try:
        download, created = manager.submit(catalog_entry("vista3d"))
        assert created
        while manager.get(download.id).state in ("queued", "running"):
            time.sleep(0.05)
        assert download.state == "failed"
        assert "accept_license: true" in download.message and download.bytes_done == 0 and not served
        assert not (downloads_dir() / "vista3d").exists()
    finally:
        manager.close()
