"""The binary frame: both halves (server and module) agree, and every malformed frame is refused by name."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from support.live_server import module_on_path
from tsfm_backend.server import wire

module_on_path()
from TSFMSegmentationLib import wire as client_wire  # noqa: E402

MAX = 64 << 20


def _decode(body: bytes, allowed: tuple[str, ...] = wire.ARRAY_DTYPES) -> tuple[dict, np.ndarray]:
    header, payload = wire.split_frame(body)
    return header, wire.decode_array(header["array"], payload, MAX, allowed)


@pytest.mark.parametrize("dtype", wire.ARRAY_DTYPES)
@pytest.mark.parametrize("compression", wire.COMPRESSIONS)
def test_client_frames_decode_on_the_server_exactly(dtype: str, compression: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    body = client_wire.encode_frame({"spacing": [1.0, 2.0, 3.0]}, array, compression)
    header, decoded = _decode(body)
    assert header["spacing"] == [1.0, 2.0, 3.0]
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == (3, 4, 5)
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("compression", wire.COMPRESSIONS)
def test_server_frames_decode_in_the_client_exactly(compression: str) -> None:
    labels = np.zeros((7, 9, 11), np.uint16)
    labels[2:5, 3:6, 4:9] = 300
    header, decoded = client_wire.decode_frame(wire.encode_frame({"names": {"300": "liver"}}, labels, compression))
    assert header == {"names": {"300": "liver"}}
    np.testing.assert_array_equal(decoded, labels)


def test_empty_crop_travels() -> None:
    header, decoded = client_wire.decode_frame(wire.encode_frame({"origin": [0, 0, 0]}, np.zeros((0, 0, 0), np.uint8)))
    assert decoded.shape == (0, 0, 0) and header["origin"] == [0, 0, 0]


def test_image_digest_is_the_same_on_both_sides_and_sees_geometry() -> None:
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    geometry = ((0.8, 0.8, 3), (1, 2, 3), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    server_id = wire.image_digest(array, *geometry)
    assert server_id == client_wire.image_digest(array, *geometry)
    assert len(server_id) == 32 and int(server_id, 16) >= 0
    assert wire.image_digest(array, (0.8, 0.8, 3.1), *geometry[1:]) != server_id
    assert wire.image_digest(array.astype(np.int32), *geometry) != server_id
    moved = array.copy()
    moved[0, 0, 0] += 1
    assert wire.image_digest(moved, *geometry) != server_id


def _frame(header: dict, payload: bytes) -> bytes:
    import json

    text = json.dumps(header).encode()
    return struct.pack("<4sBI", b"TSFM", 1, len(text)) + text + payload


GOOD_META = {"dtype": "int16", "shape": [2, 3, 4], "compression": "zlib"}
GOOD_PAYLOAD = zlib.compress(np.zeros((2, 3, 4), np.int16).tobytes())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "too short"),
        (b"PK\x03\x04" + b"\0" * 20, "magic"),
        (struct.pack("<4sBI", b"TSFM", 9, 2) + b"{}", "version 9"),
        (struct.pack("<4sBI", b"TSFM", 1, 10**9), "exceeds"),
        (struct.pack("<4sBI", b"TSFM", 1, 50) + b"{}", "truncated inside its header"),
        (struct.pack("<4sBI", b"TSFM", 1, 3) + b"{x}", "not valid UTF-8 JSON"),
        (_frame({"spacing": [1, 1, 1]}, b""), "'array' object"),
        (_frame({"array": {**GOOD_META, "dtype": "complex64"}}, GOOD_PAYLOAD), "dtype 'complex64'"),
        (_frame({"array": {**GOOD_META, "dtype": "object"}}, GOOD_PAYLOAD), "dtype 'object'"),
        (_frame({"array": {**GOOD_META, "shape": [2, 3]}}, GOOD_PAYLOAD), "three integers"),
        (_frame({"array": {**GOOD_META, "shape": [2, -3, 4]}}, GOOD_PAYLOAD), "integers from 0"),
        (_frame({"array": {**GOOD_META, "shape": [2, 3.5, 4]}}, GOOD_PAYLOAD), "integers from 0"),
        (_frame({"array": {**GOOD_META, "shape": [4096, 4096, 4096]}}, GOOD_PAYLOAD), "over the limit"),
        (_frame({"array": {**GOOD_META, "compression": "lz4"}}, GOOD_PAYLOAD), "compression 'lz4'"),
        (_frame({"array": GOOD_META}, GOOD_PAYLOAD[:-6]), "truncated"),
        (_frame({"array": GOOD_META}, b"not zlib at all"), "not valid zlib"),
        (_frame({"array": GOOD_META}, zlib.compress(b"\0" * 47)), "needs 48"),
        (_frame({"array": GOOD_META}, zlib.compress(b"\0" * 4800)), "more than the 48 bytes"),
        (_frame({"array": {**GOOD_META, "compression": "none"}}, b"\0" * 47), "needs 48"),
        (_frame({"array": {**GOOD_META, "compression": "gzip"}}, GOOD_PAYLOAD), "not valid gzip"),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(wire.WireError, match=message):
        _decode(body)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_images_are_refused(bad: float) -> None:
    array = np.zeros((2, 2, 2), np.float32)
    array[1, 1, 1] = bad
    with pytest.raises(wire.WireError, match="NaN or infinite"):
        _decode(client_wire.encode_frame({}, array))


def test_a_small_zip_bomb_is_stopped_at_the_declared_size() -> None:
    bomb = zlib.compress(b"\0" * (256 << 20), 9)  # 256 MiB of zeros in about 250 kB
    body = _frame({"array": {"dtype": "uint8", "shape": [1, 1, 16], "compression": "zlib"}}, bomb)
    with pytest.raises(wire.WireError, match="more than the 16 bytes"):
        _decode(body)


def test_label_frames_accept_only_label_dtypes() -> None:
    with pytest.raises(wire.WireError, match="dtype 'float32'"):
        _decode(client_wire.encode_frame({}, np.zeros((2, 2, 2), np.float32)), wire.LABEL_DTYPES)
