"""The binary array frame of the HTTP API (server half; the module's ``TSFMSegmentationLib/wire.py`` mirrors it).

Every request or response that carries voxels is one *frame*::

    offset  size  content
    0       4     magic b"TSFM"
    4       1     format version (1)
    5       4     header length H, unsigned little-endian
    9       H     header: a UTF-8 JSON object
    9 + H   ...   payload: the array's bytes, compressed as the header says

The header always holds ``"array": {"dtype", "shape", "compression"}``: ``dtype`` one of
``ARRAY_DTYPES`` (little-endian), ``shape`` the (K, J, I) = (z, y, x) shape, ``compression`` one of
``zlib``, ``gzip`` or ``none``; the payload is the C-order array. Everything else in the header is
the route's own JSON (geometry for an image, ``origin`` for a mask crop, ``names`` for a label map)
and is validated by the route's pydantic schema. Nothing is ever unpickled.

Images are content-addressed: ``image_digest`` hashes the geometry and the raw voxels, so the same
image uploaded twice, with any compression, gets the same id on the client and on the server.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any

import numpy as np

MAGIC = b"TSFM"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
COMPRESSIONS = ("zlib", "gzip", "none")
ARRAY_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
LABEL_DTYPES = ("uint8", "uint16")
MEDIA_TYPE = "application/vnd.tsfm.frame"
_PREFIX = struct.Struct("<4sBI")
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class WireError(ValueError):
    """A frame that cannot be decoded: bad magic, header, dtype, shape, size or compression."""


def encode_frame(header: dict[str, Any], array: np.ndarray, compression: str = "zlib", level: int = 1) -> bytes:
    """One frame holding ``header`` (JSON-able, without ``array``) and ``array`` (any ``ARRAY_DTYPES`` dtype)."""
    if compression not in COMPRESSIONS:
        raise WireError(f"compression {compression!r} is not one of {COMPRESSIONS}")
    dtype = np.dtype(array.dtype)
    if dtype.name not in ARRAY_DTYPES:
        raise WireError(f"dtype {dtype.name} cannot travel; use one of {ARRAY_DTYPES}")
    raw = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
    if compression == "zlib":
        payload = zlib.compress(raw, level)
    elif compression == "gzip":
        packer = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        payload = packer.compress(raw) + packer.flush()
    else:
        payload = raw
    meta = {"dtype": dtype.name, "shape": [int(n) for n in array.shape], "compression": compression}
    text = json.dumps({**header, "array": meta}, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text + payload


def split_frame(body: bytes) -> tuple[dict[str, Any], memoryview]:
    """(header JSON object, compressed payload) of a frame; only the prefix and JSON are checked here."""
    if len(body) < _PREFIX.size:
        raise WireError(f"body of {len(body)} bytes is too short for a frame (at least {_PREFIX.size})")
    magic, version, header_length = _PREFIX.unpack_from(body)
    if magic != MAGIC:
        raise WireError(f"body does not start with the frame magic {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise WireError(f"frame format version {version} is not supported (this server speaks {FORMAT_VERSION})")
    if header_length > MAX_HEADER_BYTES:
        raise WireError(f"frame header of {header_length} bytes exceeds {MAX_HEADER_BYTES}")
    end = _PREFIX.size + header_length
    if len(body) < end:
        raise WireError(f"frame is truncated inside its header ({len(body)} of {end} bytes)")
    try:
        header = json.loads(bytes(body[_PREFIX.size : end]).decode("utf-8"))
    except (ValueError, RecursionError) as error:
        # Besides malformed text (UnicodeDecodeError, JSONDecodeError: both ValueErrors), Python's json
        # refuses integers of more than 4300 digits (ValueError) and nesting deeper than the recursion
        # limit (RecursionError): a client's mistake either way, so a 400, not a 500.
        raise WireError(f"frame header is not valid UTF-8 JSON: {describe_json_error(error)}") from error
    if not isinstance(header, dict) or not isinstance(header.get("array"), dict):
        raise WireError("frame header must be a JSON object with an 'array' object")
    return header, memoryview(body)[end:]


def describe_json_error(error: BaseException) -> str:
    """What is wrong with a JSON text, in the client's terms (Python's own advice is for the server)."""
    if isinstance(error, RecursionError):
        return "it is nested too deeply"
    text = str(error)
    if "integer string conversion" in text:
        return "it holds an integer with too many digits (more than 4300)"
    return text


def array_spec(meta: dict[str, Any], allowed_dtypes: tuple[str, ...] = ARRAY_DTYPES) -> tuple[np.dtype, tuple[int, ...], str]:
    """Validated (dtype, shape, compression) of a header's ``array`` object."""
    dtype_name, shape, compression = meta.get("dtype"), meta.get("shape"), meta.get("compression", "zlib")
    if dtype_name not in allowed_dtypes:
        raise WireError(f"array dtype {dtype_name!r} is not one of {allowed_dtypes}")
    if not isinstance(shape, list) or len(shape) != 3:
        raise WireError(f"array shape must be three integers (K, J, I), got {shape!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 1 << 20 for n in shape):
        raise WireError(f"array shape entries must be integers from 0 to {1 << 20}, got {shape!r}")
    if compression not in COMPRESSIONS:
        raise WireError(f"array compression {compression!r} is not one of {COMPRESSIONS}")
    return np.dtype(dtype_name).newbyteorder("<"), tuple(shape), compression


def decode_array(
    meta: dict[str, Any],
    payload: bytes | memoryview,
    max_bytes: int,
    allowed_dtypes: tuple[str, ...] = ARRAY_DTYPES,
) -> np.ndarray:
    """The (K, J, I) array a frame carries, native byte order.

    Raises:
        WireError: bad dtype or shape, an array larger than ``max_bytes`` once decompressed, a
            payload that does not inflate to exactly ``prod(shape) * itemsize`` bytes, or
            NaN/Inf in a floating-point array.
    """
    dtype, shape, compression = array_spec(meta, allowed_dtypes)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected > max_bytes:
        raise WireError(f"array of shape {list(shape)} {dtype.name} is {expected} bytes, over the limit of {max_bytes}")
    if compression == "gzip" and bytes(payload[:2]) != b"\x1f\x8b":
        raise WireError("array payload is not valid gzip data: it does not start with gzip's magic bytes")
    if compression == "gzip" and len(payload) >= 4:
        # gzip's trailer records the inflated length (modulo 2**32): a mismatch is refused before inflating.
        recorded = int.from_bytes(bytes(payload[-4:]), "little")
        if recorded != expected % 2**32:
            raise WireError(f"gzip payload records {recorded} bytes inflated but shape {list(shape)} {dtype.name} "
                            f"needs {expected}")
    if compression == "none":
        raw = bytes(payload)
    else:
        unpacker = zlib.decompressobj(zlib.MAX_WBITS if compression == "zlib" else _GZIP_WBITS)
        try:
            # max_length bounds the output, so a small "zip bomb" payload cannot exhaust memory.
            raw = unpacker.decompress(payload, expected + 1)
        except zlib.error as error:
            raise WireError(f"array payload is not valid {compression} data: {error}") from error
        if len(raw) <= expected and not unpacker.eof:
            raise WireError(f"array payload is truncated: the {compression} stream does not end")
        if unpacker.unconsumed_tail or unpacker.unused_data:
            raise WireError(f"array payload holds more than the {expected} bytes its shape needs")
    if len(raw) != expected:
        raise WireError(f"array payload has {len(raw)} bytes but shape {list(shape)} {dtype.name} needs {expected}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    array = array.astype(dtype.newbyteorder("="), copy=False)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise WireError("array contains NaN or infinite values")
    return array


def image_digest(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: tuple[float, ...],
) -> str:
    """Content id of an image: 32 hex digits of SHA-256 over geometry, dtype, (K, J, I) shape and voxels."""
    geometry = {
        "dtype": np.dtype(array.dtype).name,
        "shape": [int(n) for n in array.shape],
        "spacing": [float(v) for v in spacing],
        "origin": [float(v) for v in origin],
        "direction": [float(v) for v in direction],
    }
    digest = hashlib.sha256(b"tsfm-image-v1\0")
    digest.update(json.dumps(geometry, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    digest.update(np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<")).tobytes())
    return digest.hexdigest()[:32]
