"""Reading and writing volumes with SimpleITK: any file it reads (NIfTI, NRRD, MHA, ...) or a DICOM folder.

Every failure raises ``ImageReadError`` whose message names the path and the problem (missing,
corrupt, not an image, 2D, 4D, vector pixels, empty folder), because users see it verbatim.
Geometry is carried unchanged: the returned ``Volume`` holds ITK spacing, origin and the full
direction matrix, so oblique and flipped acquisitions survive a read/write round trip.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tsfm_backend.volume import Volume, VolumeError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".nhdr",
    ".mha",
    ".mhd",
    ".img",
    ".hdr",
    ".tif",
    ".tiff",
    ".dcm",
)


class ImageReadError(VolumeError):
    """An input image that cannot be used; the message names the file and the problem."""


def is_image_file(path: Path) -> bool:
    """True for a file whose name ends in a suffix SimpleITK reads as a volume."""
    name = path.name.lower()
    return path.is_file() and name.endswith(IMAGE_SUFFIXES)


def image_stem(path: Path) -> str:
    """File name without its image suffix (``ct.nii.gz`` -> ``ct``, ``ct.seg.nrrd`` -> ``ct.seg``)."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def dicom_series(folder: Path) -> list[list[str]]:
    """File lists of the DICOM series in ``folder`` (not recursive), largest first."""
    reader = sitk.ImageSeriesReader()
    series = [
        list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in reader.GetGDCMSeriesIDs(str(folder))
    ]
    return sorted((files for files in series if files), key=len, reverse=True)


def _from_sitk(image: sitk.Image, path: Path) -> Volume:
    """A 3D scalar SimpleITK image as a Volume; anything else is an ImageReadError naming ``path``."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "a scalar 3D image is needed"
        )
    dimension = image.GetDimension()
    if dimension == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
        dimension = 3
    if dimension == 2 or (dimension == 3 and image.GetSize()[2] == 1):
        raise ImageReadError(f"{path}: is a 2D image of size {image.GetSize()[:2]}; a 3D volume is needed")
    if dimension != 3:
        raise ImageReadError(
            f"{path}: is a {dimension}D image of size {image.GetSize()}; a single 3D volume is needed"
        )
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ImageReadError(f"{path}: contains NaN or infinite voxel values")
    try:
        return Volume(array, image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    except VolumeError as error:
        raise ImageReadError(f"{path}: {error}") from error


def _read_dicom_folder(folder: Path) -> Volume:
    series = dicom_series(folder)
    if not series:
        contents = "is empty" if not any(folder.iterdir()) else "holds no DICOM series"
        raise ImageReadError(
            f"{folder}: folder {contents}; give an image file or a folder with one DICOM series"
        )
    if len(series) > 1:
        log.warning(
            "%s holds %d DICOM series; reading the largest (%d files)", folder, len(series), len(series[0])
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series[0])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(f"{folder}: DICOM series could not be read ({_first_line(error)})") from error
    return _from_sitk(image, folder)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "Exception" not in line and "sitk::ERROR" not in line] or lines
    return useful[-1] if useful else type(error).__name__


def _gzip_trailer_size(path: Path) -> int:
    """The uncompressed length modulo 2**32 that a complete single-member gzip file stores in its last 4 bytes."""
    with open(path, "rb") as stream:
        stream.seek(-4, 2)
        return struct.unpack("<I", stream.read(4))[0]


def _nifti_data_problem(path: Path) -> str | None:
    """Why a NIfTI-1 file holds fewer voxel bytes than its header promises, or None when it is complete.

    ITK fills the missing part of a truncated NIfTI with zeros without a word, so the length is checked
    here: header ``vox_offset`` + voxels x ``bitpix`` / 8 against the (decompressed) file length.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(348)
            if len(header) < 348:
                return "header is truncated"
            for order in "<>":
                if struct.unpack(order + "i", header[:4])[0] == 348:
                    break
            else:
                return None  # NIfTI-2 or another layout: left to ITK
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            voxels = 1
            for n in dims[1 : 1 + max(0, min(dims[0], 7))]:
                voxels *= max(int(n), 1)
            expected = max(offset, 348) + voxels * bitpix // 8
            if opener is open:
                actual = path.stat().st_size
            elif _gzip_trailer_size(path) == expected % 2**32:
                return None  # the gzip trailer records the full length: no need to decompress twice
            else:
                actual = 348
                while chunk := stream.read(16 * 2**20):
                    actual += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        return f"compressed data is damaged ({error})"
    if actual < expected:
        return f"file is truncated: {actual} of {expected} bytes"
    return None


def read_volume(path: str | Path) -> Volume:
    """Read a 3D scalar image file, or the (largest) DICOM series in a folder.

    Returns the voxels in (K, J, I) order with their original dtype (integer or float HU) and the
    ITK geometry (spacing per I, J, K in mm, LPS origin, direction columns).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_folder(path)
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        message = str(error)
        if "Unable to determine ImageIO reader" in message or "Could not create IO object" in message:
            problem = "is not an image format SimpleITK can read"
        else:
            problem = f"is corrupt or unreadable ({_first_line(error)})"
        raise ImageReadError(f"{path}: {problem}") from error
    if path.name.lower().endswith((".nii", ".nii.gz")):
        problem = _nifti_data_problem(path)
        if problem:
            raise ImageReadError(f"{path}: is corrupt or unreadable ({problem})")
    return _from_sitk(image, path)


def to_sitk(volume: Volume) -> sitk.Image:
    """The Volume as a SimpleITK image with the same voxels and geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array), isVector=False)
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image


def write_volume(
    volume: Volume, path: str | Path, metadata: dict[str, str] | None = None, compression_level: int = 1
) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix, compressed), creating parent folders.

    ``compression_level`` 1 is the fastest zlib level; label maps shrink almost as much as at 9.

    ``metadata`` key/value pairs go into the header of formats that keep them (NRRD, MHA).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = to_sitk(volume)
    for key, value in (metadata or {}).items():
        image.SetMetaData(key, value)
    try:
        sitk.WriteImage(image, str(path), True, compression_level)
    except RuntimeError as error:
        raise ImageReadError(f"{path}: cannot write image ({_first_line(error)})") from error
    return path
