"""The fast .npy codec reads and writes exactly what numpy does, and refuses what it must."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgeml_agent.npy import NpyError, dumps, loads


def np_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


ARRAYS: list[np.ndarray] = [
    np.ones((1, 4), np.float32), np.arange(5, dtype=np.int64), np.array(3.5), np.zeros((2, 3, 4), np.uint8),
    np.zeros((0, 3), np.float32), np.arange(6.0).reshape(2, 3).T, np.ones((1, 8, 8, 3), ">f4"),
    np.array([True, False]),
]


@pytest.mark.parametrize("arr", ARRAYS, ids=[f"{a.dtype}{list(a.shape)}" for a in ARRAYS])
def test_roundtrip_matches_numpy(arr):
    got = loads(np_bytes(arr))
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    back = np.load(io.BytesIO(dumps(arr)))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    if arr.flags.c_contiguous:
        assert dumps(arr) == np_bytes(arr)       # byte-identical to np.save


def test_unusual_but_valid_headers_fall_back_to_numpy():
    structured = np.zeros(2, dtype=[("a", "<f4"), ("b", "<i2")])
    np.testing.assert_array_equal(loads(np_bytes(structured)), structured)


@pytest.mark.parametrize(("body", "message"), [
    (b"", "magic"),
    (b"PK\x03\x04 zip", "magic"),
    (b"\x93NUMPY\x09\x00\x10\x00" + b" " * 16, "format version 9"),
    (np_bytes(np.ones(4, np.float32))[:-1], "holds 15 data bytes"),
    (np_bytes(np.ones(4, np.float32))[:20], "cut short"),
    (np_bytes(np.array([{"a": 1}], dtype=object)), "object arrays are not accepted"),
])
def test_bad_bodies_raise_npy_error(body, message):
    with pytest.raises(NpyError, match=message):
        loads(body)


def test_object_arrays_are_not_written():
    with pytest.raises(NpyError, match="object arrays"):
        dumps(np.array([None, 1], dtype=object))


def test_cached_headers_still_read_each_bodys_own_data():
    a, b = np.arange(4, dtype=np.float32), np.arange(4, 8, dtype=np.float32)
    np.testing.assert_array_equal(loads(np_bytes(a)), a)
    np.testing.assert_array_equal(loads(np_bytes(b)), b)          # same header, served from the cache
    with pytest.raises(NpyError, match="holds 12 data bytes"):
        loads(np_bytes(b)[:-4])                                     # cached header, wrong length: still refused
    assert dumps(b) == np_bytes(b) and dumps(a) == np_bytes(a)
