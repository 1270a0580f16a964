"""Fuzz every fleet API operation with text a careful client never sends, on SQLite and PostgreSQL:
no answer may be a 5xx (or break the documented schema).

schemathesis generates each operation's requests (non-ASCII text included: its default alphabet is all of
Unicode that UTF-8 can carry). It never generates lone UTF-16 surrogates, which UTF-8 cannot carry, but
JSON can (``"\\ud800"``) and Python's parser accepts: so the JSON bodies it makes are re-spelled here with
such text in their strings and keys. Paths and queries get the byte-level counterpart, percent-encoded
bytes that are not UTF-8 at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.fleet.conftest import Fleet, make_fleet
from tests.support.postgres import temporary_database

pytestmark = pytest.mark.slow
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 6

LONE_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
ODD_TEXT = st.one_of(
    st.lists(LONE_SURROGATE, min_size=1, max_size=3).map("".join),
    st.text(st.characters(min_codepoint=0x80), min_size=1, max_size=8),        # non-ASCII, astral planes too
    st.tuples(st.text(max_size=4), LONE_SURROGATE, st.text(max_size=4)).map("".join),
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """An in-process fleet (no listener, no broker) over SQLite or a throw-away PostgreSQL database."""
    if request.param == "sqlite":
        yield from make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'fleet.db'}")
    else:
        with temporary_database() as url:
            yield from make_fleet(tmp_path / "data", url)


@st.composite
def with_odd_text(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with some of its strings (keys too) replaced by, or extended with, odd text."""
    if isinstance(value, str):
        return draw(st.one_of(st.just(value), ODD_TEXT, ODD_TEXT.map(lambda odd: value + odd)))
    if isinstance(value, list):
        return [draw(with_odd_text(v)) for v in value]
    if isinstance(value, dict):
        out = {draw(with_odd_text(k)): draw(with_odd_text(v)) for k, v in value.items()}
        if draw(st.booleans()):
            out[draw(ODD_TEXT)] = draw(ODD_TEXT)     # a field no schema names
        return out
    return value


def operations_with_headers(fleet: Fleet) -> tuple[list[Any], Any]:
    device_token = fleet.enroll()["api_token"]
    enroll_token = fleet.call("POST", "/v1/enrollment-tokens", json={"expires_in_s": 600}).json()["token"]
    admin = {"Authorization": f"Bearer {fleet.admin_token}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", fleet.http.app, headers=admin)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]

    def headers_for(path: str) -> dict[str, str]:
        if path.startswith("/v1/device/") or path == "/v1/devices/me/desired":
            return {"Authorization": f"Bearer {device_token}"}
        if path == "/v1/enroll":
            return {"Authorization": f"Bearer {enroll_token}"}
        return admin

    return operations, headers_for


def test_no_operation_answers_a_5xx_to_surrogates_or_non_ascii_text(fleet: Fleet) -> None:
    operations, headers_for = operations_with_headers(fleet)
    assert len(operations) >= 30      # every route the app serves is in the document
    with_body = 0
    for operation in operations:
        headers = headers_for(operation.path)

        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy(), data=st.data())
        def run(case: schemathesis.Case, data: st.DataObject) -> None:
            if isinstance(case.body, dict | list):
                # ensure_ascii: the surrogates travel as \\udXXX escapes, as an attacker's client sends them
                case.body = json.dumps(data.draw(with_odd_text(case.body))).encode()
            case.call_and_validate(headers=headers, checks=CHECKS)  # noqa: B023 - run() is called right here

        run()
        with_body += operation.method.upper() in ("POST", "PATCH")
    assert with_body >= 10


NOT_UTF8 = ["%ED%A0%80", "%FF", "%C0%AF", "caf%C3%A9", "%00"]


def test_bytes_that_are_not_utf8_in_paths_and_queries_are_never_a_5xx(fleet: Fleet) -> None:
    operations, headers_for = operations_with_headers(fleet)
    for operation in operations:
        for odd in NOT_UTF8:
            path = operation.path
            for name in ("device_id", "ref", "token_id", "key_id", "rollout_id"):
                path = path.replace("{" + name + "}", f"x{odd}")
            for url in (path, f"{path}?group={odd}&tag={odd}&name={odd}&state={odd}&since={odd}"):
                r = fleet.http.request(operation.method.upper(), url, headers=headers_for(operation.path))
                assert r.status_code < 500, f"{operation.method} {url}: {r.status_code} {r.text[:300]}"
