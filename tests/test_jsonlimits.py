"""edgeml.jsonlimits: the bracket scan agrees with the real nesting of any JSON value, and every limit
refuses before the json module can recurse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeml.jsonlimits import JSONLimitError, loads_bounded, nesting_depth

# strings rich in what could confuse a scanner: brackets, quotes, backslashes, escapes
TRICKY = st.text(alphabet=st.sampled_from(list('[]{}"\\/ab\n\t\u00e9\u2028')), max_size=12)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TRICKY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY, inner, max_size=4),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@given(VALUES, st.booleans())
def test_the_scan_counts_exactly_the_nesting_outside_strings(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nesting_depth(text) == _depth(value)
    assert loads_bounded(text, max_bytes=len(text), max_depth=max(_depth(value), 1)) == value


@pytest.mark.parametrize(("text", "depth"), [
    (b'"[[["', 0), (b'["\\"[[", [1]]', 2), (b'["\\\\", [[1]]]', 3), (b'["\\\\\\"[", 1]', 1), (b"[" * 10, 10),
])
def test_escapes_before_quotes_are_read_as_json_reads_them(text: bytes, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_a_deep_document_is_refused_before_parsing_at_any_size() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(JSONLimitError, match="more than 64 levels deep"):
        loads_bounded(deep, max_bytes=1 << 20)
    assert loads_bounded(b"[" * 64 + b"]" * 64, max_bytes=1 << 20) is not None
    with pytest.raises(JSONLimitError, match="more than 64 levels deep"):
        loads_bounded(b"[" * 65 + b"]" * 65, max_bytes=1 << 20)


def test_size_is_checked_first() -> None:
    with pytest.raises(JSONLimitError, match="11 bytes, over the 10-byte limit"):
        loads_bounded(b'"abcdefghi"', max_bytes=10)


@pytest.mark.parametrize(("text", "message"), [
    (b"[NaN]", "NaN is not a JSON number"), (b"-Infinity", "-Infinity is not a JSON number"),
    (b"[1e400]", "1e400 is too large"), (b'["\\ud800"]', r"lone UTF-16 surrogate \(\\ud800\)"),
    (b'{"\\udfff": 1}', "lone UTF-16 surrogate"), (b'{"a": "x\\u0000"}', "NUL character"),
])
def test_values_nothing_downstream_can_store_are_refused(text: bytes, message: str) -> None:
    with pytest.raises(JSONLimitError, match=message):
        loads_bounded(text, max_bytes=1 << 10)


def test_what_is_not_json_stays_a_value_error_of_its_own_kind() -> None:
    with pytest.raises(json.JSONDecodeError):
        loads_bounded(b"[1,", max_bytes=100)
    with pytest.raises(UnicodeDecodeError):
        loads_bounded(b'"\xff"', max_bytes=100)
    assert loads_bounded('{"a": ["\\ud83d\\ude00"]}', max_bytes=100) == {"a": ["\U0001f600"]}  # a pair is fine
