"""nnInteractive's array format: a self-describing header and a chunked blosc2 payload.

    offset  size       content
    0       4          magic b"NNIA"
    4       1          format version (1)
    5       1          codec: 1 = blosc2 ZSTD, 2 = blosc2 LZ4
    6       1          ndim
    7       1          length L of the dtype name
    8       L          dtype name, ASCII ("uint8", "float32", ...)
    8 + L   8 x ndim   shape, int64 little-endian
    ...     4          number of chunks, uint32 little-endian
    then per chunk: uncompressed length (uint64 LE), compressed length (uint64 LE), one blosc2 frame

The C-order array bytes are cut into chunks of at most 1 GiB (blosc2 takes at most 2 GiB a call);
each frame records its own filter, so a reader needs none. The decoder checks every declared size
against the limit and against the frames before it writes a byte, so a hostile body costs no more
than its own length plus the array it declares (already refused when above ``max_bytes``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import blosc2
import numpy as np

MAGIC = b"NNIA"
VERSION = 1
CODECS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
          "float16", "float32", "float64")
CHUNK_BYTES = 1 << 30
_PREFIX = struct.Struct("<4sBBBB")
_COUNT = struct.Struct("<I")
_CHUNK = struct.Struct("<QQ")


class NNIAError(ValueError):
    """A body that is not a readable NNIA array (bad magic, version, codec, dtype, shape or payload)."""


class ArrayTooLarge(NNIAError):
    """A well-formed array that declares more bytes than the server accepts."""


@dataclass(frozen=True)
class ArraySpec:
    """What the header declares: dtype, shape, and where the payload starts."""

    dtype: np.dtype
    shape: tuple[int, ...]
    payload_offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_spec(buffer: bytes, max_ndim: int = 4) -> ArraySpec:
    """The header of an NNIA body, checked; nothing is decompressed."""
    if len(buffer) < _PREFIX.size:
        raise NNIAError(f"array body of {len(buffer)} bytes is too short for an NNIA header")
    magic, version, codec, ndim, name_length = _PREFIX.unpack_from(buffer, 0)
    if magic != MAGIC:
        raise NNIAError(f"array body does not start with {MAGIC!r} (got {magic!r})")
    if version != VERSION:
        raise NNIAError(f"NNIA version {version} is not supported (this server reads version {VERSION})")
    if codec not in CODECS:
        raise NNIAError(f"NNIA codec {codec} is not one of {sorted(CODECS)} (1 = ZSTD, 2 = LZ4)")
    if not 1 <= ndim <= max_ndim:
        raise NNIAError(f"array has {ndim} dimensions; expected 1 to {max_ndim}")
    offset = _PREFIX.size
    name = bytes(buffer[offset:offset + name_length]).decode("ascii", errors="replace")
    if name not in DTYPES:
        raise NNIAError(f"array dtype {name!r} is not one of {DTYPES}")
    offset += name_length
    if len(buffer) < offset + 8 * ndim + _COUNT.size:
        raise NNIAError("array body ends inside its header")
    shape = struct.unpack_from(f"<{ndim}q", buffer, offset)
    if any(n < 0 for n in shape):
        raise NNIAError(f"array shape {list(shape)} has a negative length")
    return ArraySpec(np.dtype(name), tuple(int(n) for n in shape), offset + 8 * ndim)


def unpack(buffer: bytes, max_bytes: int, max_ndim: int = 4) -> np.ndarray:
    """Decode an NNIA body into a new array.

    Raises:
        ArrayTooLarge: the declared array holds more than ``max_bytes`` bytes (checked before decoding).
        NNIAError: anything else wrong with the body.
    """
    spec = read_spec(buffer, max_ndim)
    total = spec.nbytes
    if total > max_bytes:
        raise ArrayTooLarge(f"array of shape {list(spec.shape)} ({spec.dtype.name}) holds {total} bytes; "
                            f"the server takes at most {max_bytes}")
    (count,) = _COUNT.unpack_from(buffer, spec.payload_offset)
    if count != math.ceil(total / CHUNK_BYTES):
        raise NNIAError(f"array payload has {count} chunks; {total} bytes take {math.ceil(total / CHUNK_BYTES)}")
    out = np.empty(math.prod(spec.shape), dtype=spec.dtype)
    target = out.view(np.uint8)
    view = memoryview(buffer)
    offset, written = spec.payload_offset + _COUNT.size, 0
    for _ in range(count):
        if len(buffer) < offset + _CHUNK.size:
            raise NNIAError("array payload ends inside a chunk header")
        plain, packed = _CHUNK.unpack_from(buffer, offset)
        offset += _CHUNK.size
        if plain > CHUNK_BYTES or written + plain > total or plain % spec.dtype.itemsize:
            raise NNIAError(f"array chunk of {plain} bytes does not fit the declared {total}-byte array")
        if offset + packed > len(buffer):
            raise NNIAError("array payload is shorter than its chunks declare")
        frame = view[offset:offset + packed]
        try:
            if blosc2.get_cbuffer_sizes(frame)[0] != plain:
                raise NNIAError("array chunk's blosc2 frame disagrees with its declared length")
            blosc2.decompress2(frame, dst=target[written:written + plain])
        except (ValueError, RuntimeError) as error:
            if isinstance(error, NNIAError):
                raise
            raise NNIAError(f"array chunk is not a readable blosc2 frame: {error}") from error
        written += plain
        offset += packed
    if written != total or offset != len(buffer):
        raise NNIAError(f"array payload holds {written} of {total} bytes and {len(buffer) - offset} bytes too many")
    return out.reshape(spec.shape)


def pack(array: np.ndarray, codec: int = 1, level: int = 1) -> bytes:
    """Encode ``array`` (a ``DTYPES`` dtype) with blosc2 and no filter, the best choice for masks."""
    array = np.ascontiguousarray(array)
    name = array.dtype.name
    if name not in DTYPES or codec not in CODECS:
        raise NNIAError(f"cannot encode dtype {name!r} with codec {codec}")
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    raw = memoryview(array).cast("B")
    count = math.ceil(raw.nbytes / CHUNK_BYTES)
    parts = [_PREFIX.pack(MAGIC, VERSION, codec, array.ndim, len(name)), name.encode("ascii"),
             struct.pack(f"<{array.ndim}q", *array.shape), _COUNT.pack(count)]
    for start in range(0, raw.nbytes, CHUNK_BYTES):
        chunk = raw[start:start + CHUNK_BYTES]
        # typesize = itemsize keeps chunk lengths a multiple of it, which blosc2's all-zero frames need.
        frame = blosc2.compress2(chunk, typesize=array.dtype.itemsize, codec=CODECS[codec], clevel=level,
                                 filters=[blosc2.Filter.NOFILTER])
        parts += [_CHUNK.pack(len(chunk), len(frame)), frame]
    return b"".join(parts)
