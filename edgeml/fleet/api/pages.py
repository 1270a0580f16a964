"""Keyset pagination and field selection for list endpoints.

A page is ``{"items": [...], "next_cursor": "..." | null}``. The cursor is the sort key of the last
item sent (opaque to clients: base64 of JSON), so a page is one index range however deep the client
has paged, and devices enrolled meanwhile neither shift nor repeat items.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel

DEFAULT_PAGE = 200
MAX_PAGE = 1000


class Page(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(*key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parts: int) -> list[str]:
    """The sort key a cursor holds; 400 for one this server did not issue."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        key = None
    if not isinstance(key, list) or len(key) != parts or not all(isinstance(k, str) for k in key):
        raise HTTPException(400, f"cursor '{cursor[:40]}' is not one this server issued: start again without "
                                 "it, then pass each response's next_cursor")
    return key


def parse_fields(fields: str | None, allowed: Iterable[str]) -> list[str] | None:
    """``fields=id,name`` → ["id", "name"]; 400 naming the allowed ones for anything else."""
    if fields is None:
        return None
    known = list(allowed)
    wanted = [f.strip() for f in fields.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in known]
    if unknown or not wanted:
        raise HTTPException(400, f"unknown field(s) {', '.join(unknown) or '(none given)'}: choose from "
                                 f"{', '.join(known)}")
    return wanted


def select_fields(item: Mapping[str, Any], fields: list[str] | None) -> dict[str, Any]:
    return dict(item) if fields is None else {f: item[f] for f in fields}
