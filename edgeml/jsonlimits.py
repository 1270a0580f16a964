"""Parse JSON from outside (manifests, desired states, request bodies) within fixed limits.

Python's :func:`json.loads` recurses once per nesting level, so a few hundred kilobytes of ``[[[[...``
raise ``RecursionError`` (or worse, exhaust the C stack) before any schema can look at the document.
:func:`loads_bounded` refuses such input first, with a linear scan of the bytes that counts bracket
nesting outside strings, and only then hands the text to the json module.

It also refuses what the json module accepts but nothing downstream can store or re-encode:
``NaN``/``Infinity`` and numbers such as ``1e400`` that overflow to infinity (not JSON; PostgreSQL's json
type refuses them), lone UTF-16 surrogates such as
``"\\ud800"`` (no UTF-8 encoding exists, so re-serialising fails) and NUL characters (PostgreSQL text
refuses them).

Every refusal is a :class:`ValueError` (as :func:`json.loads` raises for bad JSON): the caller knows what
the document is and turns it into its own :class:`~edgeml.errors.EdgeMLError` with that context.
"""

from __future__ import annotations

import json
import math

from edgeml.jsontypes import JSON

DEFAULT_MAX_DEPTH = 64

_OPEN = frozenset(b"[{")
_INSIGNIFICANT = bytes(b for b in range(256) if b not in b'"[]{}')


class JSONLimitError(ValueError):
    """The document is over a size or nesting limit, or holds a value that is not portable JSON."""


def loads_bounded(data: bytes | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> JSON:
    """Parse ``data`` as strict JSON; refuse it, before parsing, if it is over ``max_bytes`` or nests
    arrays/objects deeper than ``max_depth``. Raises :class:`JSONLimitError` for a limit and another
    :class:`ValueError` (``json.JSONDecodeError``, ``UnicodeDecodeError``) for text that is not JSON."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JSONLimitError(f"the document is {len(raw)} bytes, over the {max_bytes}-byte limit")
    if nesting_depth(raw, limit=max_depth) > max_depth:
        raise JSONLimitError(f"the document nests arrays/objects more than {max_depth} levels deep")
    value: JSON = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    _check_strings(value)
    return value


def load_document(data: bytes | str, what: str, error: type[Exception], *, max_bytes: int,
                  max_depth: int = DEFAULT_MAX_DEPTH) -> JSON:
    """:func:`loads_bounded`, with a failure raised as ``error`` naming ``what`` was refused and why."""
    try:
        return loads_bounded(data, max_bytes=max_bytes, max_depth=max_depth)
    except JSONLimitError as exc:
        raise error(f"{what} is refused: {exc}") from exc
    except ValueError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from exc


def nesting_depth(raw: bytes, limit: int | None = None) -> int:
    """The deepest bracket nesting in ``raw``, not counting brackets inside strings; with ``limit``, stops
    counting once past it. Unbalanced or invalid input is not judged here: the json parser refuses it.

    The bytes are reduced at C speed first: escaped backslashes, then escaped quotes, then everything but
    quotes and brackets are dropped; what lies between the remaining quotes is string content.
    """
    significant = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _INSIGNIFICANT)
    outside_strings = b"".join(significant.split(b'"')[::2])
    depth = deepest = 0
    for byte in outside_strings:
        if byte in _OPEN:
            depth += 1
            if depth > deepest:
                deepest = depth
                if limit is not None and deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> float:
    raise JSONLimitError(f"{name} is not a JSON number; send a finite number or null")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):   # 1e400 parses as inf: an expiry that never comes
        raise JSONLimitError(f"the number {text[:40]} is too large for a 64-bit float")
    return value


def _check_strings(value: JSON) -> None:
    """Every key and string must encode as UTF-8 and hold no NUL; recursion is bounded by the depth check."""
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise JSONLimitError(f"the string {text[:40]!r} holds a NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JSONLimitError(
            f"the string {text[:40]!r} holds a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x}), "
            "which has no UTF-8 form") from exc
