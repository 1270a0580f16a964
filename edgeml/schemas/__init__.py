"""JSON Schemas (Draft 2020-12) of the documents edgeml reads from outside, shipped as package data.

- ``manifest.schema.json``: a bundle's manifest.json (format 1);
- ``desired.schema.json``: the signed payload of a desired state (schema 1);
- ``wire.schema.json``: the desired state's wire wrapper (payload text, key id, signature).

The schemas fix shape and types (and lengths that the fleet's database columns hold); the meaning
(semver order, signature, expiry, device id, serial) is checked by the code that owns each document.
:func:`problems` validates with the ``jsonschema`` library, imported on first use so that importing
edgeml stays cheap.
"""

from __future__ import annotations

import json
from collections import deque
from functools import cache
from importlib.resources import files
from itertools import islice
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema import ValidationError
    from jsonschema.protocols import Validator

MAX_REPORTED = 5     # one clear error: the first few problems, then a count

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
               type(None): "null"}


@cache
def schema(name: str) -> dict[str, Any]:
    """The schema ``name`` ("manifest", "desired", "wire") as a dict."""
    text = files(__package__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(name: str) -> Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema(name))


def problems(name: str, instance: object, limit: int = MAX_REPORTED) -> list[str]:
    """How ``instance`` breaks schema ``name``, one ``"$.path: what was expected"`` line per problem, ordered
    by path; at most ``limit`` lines plus one saying how many more there were. Empty when it conforms."""
    errors = sorted(islice(_validator(name).iter_errors(instance), 1000), key=lambda e: _path(e.absolute_path))
    # one line per place and problem: "required" fails once per missing key, the line names them all
    lines = list(dict.fromkeys(f"{_path(e.absolute_path)}: {_expected(e)}" for e in errors))
    return lines[:limit] + ([f"and {len(lines) - limit} more"] if len(lines) > limit else [])


def _path(parts: deque[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _got(value: object) -> str:
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return f"got an {kind}" if kind[0] in "aeiou" else f"got a {kind}"
    text = json.dumps(value)
    return f"got {kind} {text[:60]}{'...' if len(text) > 60 else ''}" if value is not None else "got null"


def _expected(error: ValidationError) -> str:
    """What the schema expected at the error's place, without echoing a huge offending value."""
    kind, want, value = error.validator, error.validator_value, error.instance
    if kind == "type":
        wanted = " or ".join(want) if isinstance(want, list) else want
        return f"expected {wanted}, {_got(value)}"
    if kind == "required":
        missing = [k for k in want if isinstance(value, dict) and k not in value]
        return f"missing required key(s) {', '.join(repr(k) for k in missing)}"
    if kind == "const":
        return f"expected {json.dumps(want)}, {_got(value)}"
    if kind == "pattern":
        return f"expected a string matching {want}, {_got(value)}"
    if kind in ("minLength", "maxLength"):
        return f"expected {'at least' if kind == 'minLength' else 'at most'} {want} characters, got {len(value)}"
    if kind in ("minItems", "maxItems"):
        return f"expected {'at least' if kind == 'minItems' else 'at most'} {want} items, got {len(value)}"
    if kind in ("minimum", "maximum"):
        return f"expected a number {'>=' if kind == 'minimum' else '<='} {want}, {_got(value)}"
    return error.message[:200]
