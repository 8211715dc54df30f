"""Reading and writing volumes with SimpleITK: any file it reads (NIfTI, NRRD, MHA, ...) or a DICOM folder.

Every failure raises ``ImageReadError`` whose message names the path and the problem (missing,
corrupt, not an image, 2D, 4D, vector pixels, empty folder), because users see it verbatim.
Geometry is carried unchanged: the returned ``Volume`` holds ITK spacing, origin and the full
direction matrix, so oblique and flipped acquisitions survive a read/write round trip.
"""

from __future__ import annotations

import gzip
import logging
import math
import struct
import zlib
from dataclasses import dataclass
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


# Largest voxel data ``read_volume`` reads (a float32 1024 x 1024 x 2048 volume is 8 GiB).
MAX_IMAGE_BYTES = 32 << 30
# Deflate cannot expand one byte into more than about 1032: a .nii.gz smaller than 1/1032 of what its
# header declares is truncated or forged, known before a byte is decompressed.
MAX_DEFLATE_RATIO = 1032
# Decompressed bytes beyond what the header declares that a .nii.gz may hold (padding) before it is refused.
DECOMPRESS_SLACK = 1 << 20
CHUNK_BYTES = 16 << 20
# NIfTI datatype codes of float voxels, whose NaN/Inf ITK reads as 0.
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


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


def _declared_problem(path: Path, max_bytes: int) -> str | None:
    """Why an image's header declares more voxel bytes than ``max_bytes``, read from the header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        one = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    except (RuntimeError, TypeError, ValueError):
        return None  # not readable as an image: sitk.ReadImage says why
    declared = math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * one.GetSizeOfPixelComponent()
    if declared > max_bytes:
        return f"header declares {declared} bytes of voxels, over the reader's limit of {max_bytes}"
    return None


@dataclass(frozen=True)
class _NiftiLayout:
    """What a NIfTI-1/-2 header says about the voxel data that follows it."""

    data_start: int  # byte offset of the voxels in the (decompressed) file
    data_bytes: int
    dtype: np.dtype | None  # the voxels' dtype where they are floats (NaN/Inf counted), else None


def _nifti_layout(header: bytes) -> _NiftiLayout | str | None:
    """The data layout a NIfTI header declares, a problem (str) for an impossible header, or None for
    anything that is not a single-file NIfTI-1/-2 (left to ITK)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            if header[344:347] != b"n+1":
                return None  # a .hdr/.img pair or no NIfTI magic: left to ITK
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = struct.unpack(order + "f", header[108:112])[0]
            header_size = 348
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            if header[4:7] != b"n+2":
                return None
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            header_size = 540
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7:
        return f"header declares {rank} dimensions (1 to 7 are possible)"
    if any(n < 0 for n in dims[1 : 1 + rank]):
        return f"header declares a negative size {list(dims[1 : 1 + rank])}"
    if bitpix <= 0 or not math.isfinite(offset) or offset < 0:
        return f"header is corrupt (bitpix {bitpix}, vox_offset {offset})"
    voxels = math.prod(max(int(n), 1) for n in dims[1 : 1 + rank])
    dtype = NIFTI_FLOAT_TYPES.get(datatype)
    return _NiftiLayout(data_start=max(int(offset), header_size), data_bytes=(voxels * bitpix + 7) // 8,
                        dtype=None if dtype is None else np.dtype(dtype).newbyteorder(order))


class _NonFiniteCounter:
    """Counts NaN/Inf voxels in the data bytes fed to it in pieces, whatever the piece boundaries."""

    def __init__(self, layout: _NiftiLayout) -> None:
        self.layout, self.position, self.count, self._rest = layout, 0, 0, b""

    def feed(self, chunk: bytes) -> None:
        start, end = self.layout.data_start, self.layout.data_start + self.layout.data_bytes
        low, high = max(start - self.position, 0), min(end - self.position, len(chunk))
        self.position += len(chunk)
        if self.layout.dtype is None or high <= low:
            return
        data = self._rest + chunk[low:high]
        usable = len(data) - len(data) % self.layout.dtype.itemsize
        values = np.frombuffer(data[:usable], dtype=self.layout.dtype)
        self.count += int(values.size - np.count_nonzero(np.isfinite(values)))
        self._rest = data[usable:]


def _check_nifti(path: Path, max_bytes: int) -> int:
    """Check a NIfTI file against its header before ITK allocates anything; returns its NaN/Inf voxel count.

    ITK allocates what the header declares and fills a truncated file's missing part with zeros without
    a word; it reads only as far as the voxels go, so a damaged ``.nii.gz`` passes unless its CRC is
    checked; and it reads NaN and infinite voxels as 0. So, before ITK reads the file:

    * the declared voxel bytes must be at most ``max_bytes``;
    * ``.nii``: the file must be as long as the header says;
    * ``.nii.gz``: the compressed size must be able to hold the declared size at all (deflate expands
      by at most ``MAX_DEFLATE_RATIO``), and the file is decompressed in pieces, never whole: it must
      end where the header says (at most ``DECOMPRESS_SLACK`` bytes more) and its CRC must match.

    Raises ImageReadError naming the file and the problem.
    """
    compressed = path.name.lower().endswith(".gz")
    size = path.stat().st_size

    def fail(problem: str) -> ImageReadError:
        return ImageReadError(f"{path}: is corrupt or unreadable ({problem})")

    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") if compressed and is_gzip else raw as stream:
                header = stream.read(540)
                layout = _nifti_layout(header)
                if layout is None:
                    if len(header) < 348:
                        raise fail("header is truncated")
                    return 0
                if isinstance(layout, str):
                    raise fail(layout)
                if layout.data_bytes > max_bytes:
                    raise ImageReadError(f"{path}: header declares {layout.data_bytes} bytes of voxels, over the "
                                         f"reader's limit of {max_bytes}")
                expected = layout.data_start + layout.data_bytes
                counter = _NonFiniteCounter(layout)
                counter.feed(header)
                if not (compressed and is_gzip):
                    if size < expected:
                        raise fail(f"file is truncated: {size} of {expected} bytes")
                    if layout.dtype is None:
                        return 0
                    stream.seek(counter.position)
                    while counter.position < expected and (chunk := stream.read(CHUNK_BYTES)):
                        counter.feed(chunk)
                    return counter.count
                if expected > MAX_DEFLATE_RATIO * size + (1 << 20):
                    raise fail(f"file is truncated: {size} compressed bytes cannot hold the {expected} bytes its "
                               "header declares")
                total = len(header)
                while chunk := stream.read(CHUNK_BYTES):
                    total += len(chunk)
                    if total > expected + DECOMPRESS_SLACK:
                        raise fail(f"decompresses to more than the {expected} bytes its header declares")
                    counter.feed(chunk)
    except (EOFError, OSError, zlib.error) as error:  # gzip.BadGzipFile (a CRC mismatch, for one) is an OSError
        raise fail(f"compressed data is damaged: {error}") from error
    if total < expected:
        raise fail(f"file is truncated: {total} of {expected} bytes once decompressed")
    return counter.count


def read_volume(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> Volume:
    """Read a 3D scalar image file, or the (largest) DICOM series in a folder.

    Returns the voxels in (K, J, I) order with their original dtype (integer or float HU) and the
    ITK geometry (spacing per I, J, K in mm, LPS origin, direction columns). An image whose header
    declares more than ``max_bytes`` of voxels is refused before anything is allocated. NIfTI files
    are checked against their header first (``_check_nifti``); their NaN and infinite voxels are read
    as 0 (ITK's NIfTI reader does so) with a warning that gives their number.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_folder(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: is not a regular file (a pipe, socket or device?); give an image file "
                             "or a DICOM folder")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    nonfinite = 0
    if path.name.lower().endswith((".nii", ".nii.gz")):
        nonfinite = _check_nifti(path, max_bytes)
    else:
        problem = _declared_problem(path, max_bytes)
        if problem:
            raise ImageReadError(f"{path}: {problem}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        message = str(error)
        if "Unable to determine ImageIO reader" in message or "Could not create IO object" in message:
            problem = "is not an image format SimpleITK can read"
        else:
            problem = f"is corrupt or unreadable ({_first_line(error)})"
        raise ImageReadError(f"{path}: {problem}") from error
    if nonfinite:
        log.warning("%s: %d voxels are NaN or infinite; they are read as 0", path, nonfinite)
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
