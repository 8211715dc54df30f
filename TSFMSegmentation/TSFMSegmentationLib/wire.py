"""The binary array frame of the backend's HTTP API (module half; ``tsfm_backend/server/wire.py`` mirrors it).

Kept separate on purpose so the module never imports the backend; a contract test encodes with
each half and decodes with the other. Frame layout::

    b"TSFM" | version u8 = 1 | header length u32 little-endian | header JSON (UTF-8) | payload

The header holds ``"array": {"dtype", "shape" (K, J, I), "compression": zlib|gzip|none}`` plus the
route's own fields; the payload is the C-order little-endian array, compressed. numpy + stdlib only.
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
MEDIA_TYPE = "application/vnd.tsfm.frame"
ARRAY_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_PREFIX = struct.Struct("<4sBI")
_GZIP_WBITS = 16 + zlib.MAX_WBITS


class WireError(ValueError):
    """A frame from the server that cannot be decoded (wrong magic, version, size or compression)."""


def encode_frame(header: dict[str, Any], array: np.ndarray, compression: str = "zlib", level: int = 1) -> bytes:
    """A frame holding ``header`` (JSON-able) and ``array`` (K, J, I); bool arrays travel as uint8."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    dtype = np.dtype(array.dtype)
    if dtype.name not in ARRAY_DTYPES:
        raise WireError(f"dtype {dtype.name} cannot be sent; convert to one of {ARRAY_DTYPES}")
    raw = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
    if compression == "zlib":
        payload = zlib.compress(raw, level)
    elif compression == "gzip":
        packer = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        payload = packer.compress(raw) + packer.flush()
    elif compression == "none":
        payload = raw
    else:
        raise WireError(f"compression {compression!r} is not zlib, gzip or none")
    meta = {"dtype": dtype.name, "shape": [int(n) for n in array.shape], "compression": compression}
    text = json.dumps({**header, "array": meta}, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text + payload


def decode_frame(body: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """(header without ``array``, array (K, J, I)) of a frame the server sent."""
    if len(body) < _PREFIX.size:
        raise WireError(f"answer of {len(body)} bytes is too short to be a frame")
    magic, version, header_length = _PREFIX.unpack_from(body)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise WireError(f"answer is not a version-{FORMAT_VERSION} frame (magic {magic!r}, version {version})")
    end = _PREFIX.size + header_length
    try:
        header = json.loads(body[_PREFIX.size:end].decode("utf-8"))
        meta = header.pop("array")
        dtype = np.dtype(meta["dtype"]).newbyteorder("<")
        shape = tuple(int(n) for n in meta["shape"])
        compression = meta.get("compression", "zlib")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise WireError(f"frame header is unreadable: {error}") from error
    payload = body[end:]
    try:
        if compression == "zlib":
            raw = zlib.decompress(payload)
        elif compression == "gzip":
            raw = zlib.decompress(payload, _GZIP_WBITS)
        else:
            raw = bytes(payload)
    except zlib.error as error:
        raise WireError(f"frame payload is not valid {compression} data: {error}") from error
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise WireError(f"frame payload has {len(raw)} bytes, shape {list(shape)} {dtype.name} needs {expected}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    return header, array


def image_digest(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: tuple[float, ...],
) -> str:
    """The id the server gives this image: 32 hex digits of SHA-256 over geometry, dtype, shape and voxels."""
    geometry = {
        "dtype": np.dtype(array.dtype).name,
        "shape": [int(n) for n in array.shape],
        "spacing": [float(v) for v in spacing],
        "origin": [float(v) for v in origin],
        "direction": [float(v) for v in np.asarray(direction, dtype=float).ravel()],
    }
    digest = hashlib.sha256(b"tsfm-image-v1\0")
    digest.update(json.dumps(geometry, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    digest.update(np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<")).tobytes())
    return digest.hexdigest()[:32]
