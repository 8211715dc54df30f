"""Hostile image files: a header that declares gigabytes, a damaged .nii.gz, a pipe instead of a file,
NaN voxels. Each is refused (or warned about) with the file named, before anything large is allocated."""

from __future__ import annotations

import gzip
import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from tsfm_backend.cli import main
from tsfm_backend.image_io import ImageReadError, read_volume

DECLARED = (3, 2000, 2000, 160)  # 640 million int16 voxels: 1.28 GB that the file does not hold


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny", patch_size=(16, 32, 32), spacing=None)


def forged_header(real: Path, dims: tuple[int, ...] = DECLARED) -> bytes:
    """The first 352 bytes of a real NIfTI-1 (header and extension flag) with ``dims`` declared."""
    header = bytearray(gzip.decompress(real.read_bytes())[:352])
    struct.pack_into("<8h", header, 40, *dims, *([1] * (8 - len(dims))))
    return bytes(header)


def peak_rss_mb(path: Path) -> tuple[float, str]:
    """(peak resident MiB, error text) of a fresh process that reads ``path``."""
    code = ("import resource, sys\nfrom tsfm_backend.image_io import read_volume\n"
            "try:\n    read_volume(sys.argv[1])\n    error = ''\nexcept ValueError as e:\n    error = str(e)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\nprint(error)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          check=True)
    rss, error = done.stdout.splitlines()[:2]
    return float(rss), error


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_small_file_declaring_gigabytes_is_refused_before_allocating(tmp_path: Path, shared_data: Path,
                                                                      suffix: str) -> None:
    header = forged_header(shared_data / "totalseg" / "example_ct_sm.nii.gz")
    data = header + b"\0" * 1024
    path = tmp_path / f"forged{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    assert path.stat().st_size < 1500
    rss, error = peak_rss_mb(path)
    assert f"forged{suffix}: is corrupt or unreadable (file is truncated" in error
    baseline, _ = peak_rss_mb(shared_data / "totalseg" / "example_ct_sm.nii.gz")  # a real 1.5 MB CT
    assert rss < baseline + 200, f"reading a {path.stat().st_size}-byte file took {rss:.0f} MiB ({baseline:.0f})"


def test_a_nifti2_header_is_checked_too(tmp_path: Path) -> None:
    image = nib.Nifti2Image(np.zeros((4, 5, 6), np.int16), np.eye(4))
    path = tmp_path / "two.nii"
    nib.save(image, path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<8q", raw, 16, 3, 4000, 4000, 4000, 1, 1, 1, 1)
    path.write_bytes(raw)
    with pytest.raises(ImageReadError, match=r"two\.nii: header declares 128000000000 bytes of voxels, over"):
        read_volume(path)
    with pytest.raises(ImageReadError, match=r"two\.nii: is corrupt or unreadable \(file is truncated"):
        read_volume(path, max_bytes=1 << 40)


def test_other_formats_are_bounded_by_their_header(tmp_path: Path) -> None:
    path = tmp_path / "big.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30, 40), np.int16)), str(path), True)
    assert read_volume(path).shape == (20, 30, 40)
    with pytest.raises(ImageReadError, match=r"big\.nrrd: header declares 48000 bytes of voxels, over the "
                                             r"reader's limit of 40000"):
        read_volume(path, max_bytes=40_000)


def test_a_flipped_byte_in_a_nii_gz_is_an_error_naming_the_file(tmp_path: Path, shared_data: Path,
                                                               tiny_model: Path, capsys) -> None:  # noqa: ANN001
    data = bytearray((shared_data / "totalseg" / "example_ct_sm.nii.gz").read_bytes())
    data[len(data) // 2] ^= 0x01
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"flipped\.nii\.gz: is corrupt or unreadable \(compressed data is "
                                             r"damaged"):
        read_volume(path)
    code = main(["predict", "-m", str(tiny_model), "-i", str(path), "-o", str(tmp_path / "out.nii.gz"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "flipped.nii.gz" in err and "Traceback" not in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_nii_gz_that_inflates_past_its_header_is_refused(tmp_path: Path, shared_data: Path) -> None:
    raw = gzip.decompress((shared_data / "totalseg" / "example_ct_sm.nii.gz").read_bytes())
    path = tmp_path / "padded.nii.gz"
    path.write_bytes(gzip.compress(raw + b"\0" * (4 << 20)))  # 4 MiB of zeros past the voxels
    with pytest.raises(ImageReadError, match=r"padded\.nii\.gz: .*decompresses to more than"):
        read_volume(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_predict_on_a_pipe_says_so_without_a_traceback(tmp_path: Path, tiny_model: Path, capsys) -> None:  # noqa: ANN001
    pipe = tmp_path / "ct.nii.gz"
    os.mkfifo(pipe)
    code = main(["predict", "-m", str(tiny_model), "-i", str(pipe), "-o", str(tmp_path / "o.nii.gz"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "ct.nii.gz: is not a regular file or a folder" in err and "Traceback" not in err
    with pytest.raises(ImageReadError, match="is not a regular file"):
        read_volume(pipe)  # never opened: opening a pipe blocks until someone writes


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_voxels_are_counted_in_a_warning(tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture) -> None:
    array = np.linspace(-100, 100, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    array[1, 1, 1], array[2, 2, 2], array[3, 4, 5] = np.nan, np.inf, -np.inf
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), suffix.endswith(".gz"))
    with caplog.at_level(logging.WARNING, logger="tsfm_backend.image_io"):
        volume = read_volume(path)
    assert f"nan{suffix}: 3 voxels are NaN or infinite; they are read as 0" in caplog.text
    assert np.isfinite(volume.array).all() and volume.array[1, 1, 1] == 0
    clean = tmp_path / f"clean{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.nan_to_num(array, posinf=0, neginf=0)), str(clean))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tsfm_backend.image_io"):
        read_volume(clean)
    assert "NaN" not in caplog.text
