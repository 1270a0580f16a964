"""Fast ``.npy`` encode/decode for request bodies.

``np.load``/``np.save`` on a small array cost ~0.2-0.5 ms each, mostly in parsing the header with
``ast.literal_eval``; that alone would exceed the agent's latency budget. Bodies that numpy itself wrote
have a fixed header layout, which a regular expression reads in microseconds; anything else goes
through ``np.load`` (never with pickles), so no valid file is refused.
"""

from __future__ import annotations

import io
import math
import re
from typing import Literal

import numpy as np

from edgeml.arrays import Array, DType

MAGIC = b"\x93NUMPY"
_HEADER = re.compile(
    r"\{'descr': '([<>|=][a-zA-Z]\d*)', 'fortran_order': (True|False), 'shape': \(((?:\d+, ?)*\d*)\), \}\s*$"
)


class NpyError(ValueError):
    """The bytes are not a usable .npy array (message says why)."""


def loads(body: bytes) -> Array:
    if not body.startswith(MAGIC) or len(body) < 10:
        raise NpyError("it does not start with the .npy magic bytes")
    major = body[6]
    if major == 1:
        hlen, start = int.from_bytes(body[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(body[8:12], "little"), 12
    else:
        raise NpyError(f"unknown .npy format version {major}")
    if start + hlen > len(body):
        raise NpyError("the header is cut short")
    header = body[start:start + hlen]
    parsed = _HEADERS.get(header)
    if parsed is None:
        parsed = _parse_header(header)
        if parsed is None:
            return _slow(body)
        if len(_HEADERS) >= _CACHE_SIZE:   # clients repeat the same few shapes: a small cache suffices
            _HEADERS.clear()
        _HEADERS[header] = parsed
    dtype, shape, order, count = parsed
    offset = start + hlen
    if len(body) - offset != count * dtype.itemsize:
        raise NpyError(f"it holds {len(body) - offset} data bytes; shape {list(shape)} of {dtype} needs "
                       f"{count * dtype.itemsize}")
    return np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(shape, order=order)


_CACHE_SIZE = 64
_HEADERS: dict[bytes, tuple[DType, tuple[int, ...], Literal['C', 'F'], int]] = {}


def _parse_header(header: bytes) -> tuple[DType, tuple[int, ...], Literal['C', 'F'], int] | None:
    match = _HEADER.match(header.decode("latin-1"))
    if match is None:
        return None
    descr, fortran, dims = match.groups()
    try:
        dtype = np.dtype(descr)
    except TypeError as exc:
        raise NpyError(f"unknown dtype {descr!r}") from exc
    if dtype.hasobject:   # would need pickle: never from a network client
        raise NpyError("object arrays are not accepted")
    shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
    order: Literal["C", "F"] = "F" if fortran == "True" else "C"
    return dtype, shape, order, math.prod(shape)


def _slow(body: bytes) -> Array:
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError for garbage
        raise NpyError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise NpyError("it is an .npz archive, not a single .npy array")
    return arr


def dumps(arr: Array) -> bytes:
    if not arr.flags.c_contiguous:   # (np.ascontiguousarray would turn a 0-d array into 1-d)
        arr = np.ascontiguousarray(arr)
    key = (arr.dtype.str, arr.shape)
    prefix = _PREFIXES.get(key)
    if prefix is None:
        if arr.dtype.hasobject:
            raise NpyError("object arrays cannot be sent")
        shape = repr(tuple(int(d) for d in arr.shape))   # numpy writes the Python tuple repr
        header = f"{{'descr': '{arr.dtype.str}', 'fortran_order': False, 'shape': {shape}, }}"
        pad = 64 - (10 + len(header) + 1) % 64
        header_bytes = (header + " " * (pad % 64) + "\n").encode("latin-1")
        if len(header_bytes) >= 65536:
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            return buf.getvalue()
        prefix = MAGIC + b"\x01\x00" + len(header_bytes).to_bytes(2, "little") + header_bytes
        if len(_PREFIXES) >= _CACHE_SIZE:
            _PREFIXES.clear()
        _PREFIXES[key] = prefix
    return prefix + arr.tobytes()


_PREFIXES: dict[tuple[str, tuple[int, ...]], bytes] = {}
