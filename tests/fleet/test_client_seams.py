"""``edgeml.fleet.Client`` at its transport seam (an ``httpx.MockTransport``): how the API's answers map to
edgeml errors, which requests are retried, pages followed, and how waiting for a rollout ends.

The real server is exercised by tests/examples/test_ci_release.py (the CI example against a real fleet
with real agents) and by the CLI tests; these pin the rules the real server rarely shows on demand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import edgeml.fleet
from edgeml.errors import (
    AuthError,
    ConflictError,
    EdgeMLError,
    FleetError,
    InvalidRequestError,
    NotFoundError,
    RolloutFailed,
    RolloutTimeout,
    TransientFleetError,
)
from edgeml.fleet import Client
from edgeml.fleet.sdk.http import Retry
from edgeml.fleet.sdk.records import RolloutStatus
from edgeml.fleet.sdk.waiting import Polling, wait

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, slept: list[float] | None = None) -> Client:
    fleet = Client("http://fleet.test", "efl_t", transport=httpx.MockTransport(handler),
                   retry=Retry(attempts=3, first_s=0.5, max_s=4))
    fleet.http._sleep = (slept.append if slept is not None else lambda s: None)
    return fleet


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    return lambda request: httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(("status", "body", "error", "text"), [
    (401, {"detail": "token expired"}, AuthError, "refused the token: token expired"),
    (403, {"detail": "needs the deployer role"}, AuthError, "not allowed: needs the deployer role"),
    (404, {"detail": "no bundle 'cls@9' (use a sha256 id…)"}, NotFoundError, "no bundle 'cls@9'"),
    (409, {"detail": "cls@2.0.0 already exists with different content"}, ConflictError, "already exists"),
    (413, {"detail": "bundle larger than 2147483648 bytes"}, InvalidRequestError, "larger than"),
    (422, {"detail": [{"loc": ["body", "waves", 0], "msg": "Input should be >= 1", "type": "x"}]},
     InvalidRequestError, "waves.0: Input should be >= 1"),
    (400, {"detail": "bundle refused: signature by untrusted key"}, InvalidRequestError, "untrusted key"),
    (503, {"detail": "database is restarting"}, TransientFleetError, "answered 503 (database is restarting)"),
])
def test_api_statuses_map_to_edgeml_errors_with_the_servers_message(status: int, body: Any,
                                                                    error: type[FleetError], text: str) -> None:
    with make_client(answer(status, body)) as fleet, pytest.raises(error) as caught:
        fleet.create_rollout("cls@2.0.0", group="canary")
    assert text in str(caught.value)
    assert caught.value.status_code == status
    assert isinstance(caught.value, EdgeMLError)


def test_reads_are_retried_with_backoff_and_retry_after_until_they_succeed() -> None:
    calls: list[str] = []
    answers = [httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "2"}),
               httpx.Response(502, text="bad gateway"),
               httpx.Response(200, json=[{"name": "cls", "version": "1.0.0", "id": "ab" * 32, "size": 10}])]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return answers.pop(0)

    slept: list[float] = []
    with make_client(handler, slept) as fleet:
        (bundle,) = fleet.list_bundles()
    assert (bundle.ref, bundle.size) == ("cls@1.0.0", 10)
    assert calls == ["GET", "GET", "GET"]
    assert slept == [2.0, 1.0]        # the server's Retry-After first, then our own backoff (0.5 s × 2¹)


def test_a_read_gives_up_after_the_attempts_with_a_transient_error() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    slept: list[float] = []
    with make_client(handler, slept) as fleet, pytest.raises(TransientFleetError, match="cannot reach"):
        fleet.get_rollout("ro-1")
    assert len(calls) == 3 and slept == [0.5, 1.0]


def test_writes_are_never_retried() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(500, json={"detail": "boom"})

    with make_client(handler) as fleet, pytest.raises(TransientFleetError):
        fleet.abort_rollout("ro-1", reason="bad canary")
    assert calls == ["POST"]    # a second POST could abort (or create) twice


def test_create_rollout_sends_the_gates_as_the_api_takes_them() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(201, json={"id": "ro-1", "bundle": "cls@2.0.0", "state": "running", "waves": 1})

    with make_client(handler) as fleet:
        ro = fleet.create_rollout("cls@2.0.0", group="canary", waves=[100], max_drift=0.2, min_requests=20,
                                  observe_s=5, on_failure="abort", min_reporting=1.0)
    assert (ro.id, ro.state) == ("ro-1", "running")
    assert sent == [{"bundle": "cls@2.0.0", "group": "canary", "tag": None, "waves": [100], "max_error_rate": 0.05,
                     "max_latency_regression": 0.5, "min_shadow_agreement": None, "max_drift": 0.2,
                     "min_requests": 20, "observe_s": 5, "wave_timeout_s": 1800, "on_failure": "abort",
                     "probation_s": None, "min_reporting": 1.0}]


def test_devices_follow_next_cursor_and_accept_a_server_without_pages() -> None:
    pages = {None: {"items": [{"id": "dev-1"}, {"id": "dev-2"}], "next_cursor": "c1"},
             "c1": {"items": [{"id": "dev-3"}], "next_cursor": None}}
    asked: list[dict[str, str]] = []

    def paged(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    with make_client(paged) as fleet:
        assert [d.id for d in fleet.list_devices(group="lab", page_size=2)] == ["dev-1", "dev-2", "dev-3"]
    assert asked == [{"limit": "2", "group": "lab"}, {"limit": "2", "cursor": "c1", "group": "lab"}]
    # a server that answers the whole list (no pagination on this route yet): one request, every device
    with make_client(answer(200, [{"id": "dev-1", "online": True}, {"id": "dev-2"}])) as fleet:
        devices = list(fleet.list_devices())
    assert [(d.id, d.online) for d in devices] == [("dev-1", True), ("dev-2", False)]


# -- waiting for a rollout (pure: a fake clock, statuses from a list) -----------------------------------
FIGURES = {"new": {"devices": 1, "requests": 40, "errors": 40, "error_rate": 1.0, "p50_ms": 0.2, "p95_ms": 0.4,
                   "drift": None}, "previous": None, "gates": {"max_error_rate": 0.05, "min_requests": 5}}


def status(state: str, *decisions: tuple[str, dict[str, Any]], reason: str | None = None) -> RolloutStatus:
    return RolloutStatus.from_json({"id": "ro-1", "bundle": "cls@2.0.0", "state": state, "wave": 1, "waves": 1,
                                    "reason": reason, "decisions": [{"at": "t", "action": a, "details": d}
                                                                    for a, d in decisions]})


class Clock:
    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def run_wait(statuses: list[RolloutStatus | Exception], timeout: float = 100) -> tuple[RolloutStatus, Clock]:
    clock = Clock()

    def fetch() -> RolloutStatus:
        item = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        if isinstance(item, Exception):
            raise item
        return item

    got = wait(fetch, "ro-1", timeout, polling=Polling(first_s=1, factor=2, max_s=5), clock=lambda: clock.now,
               sleep=clock.sleep)
    return got, clock


def test_wait_returns_the_completed_status_with_each_waves_figures_polling_less_and_less_often() -> None:
    passed = ("rollout.wave_passed", {"wave": 1, "of": 1, "figures": FIGURES})
    got, clock = run_wait([status("running"), TransientFleetError("restarting"), status("running"),
                           status("running"), status("completed", passed)])
    assert got.state == "completed" and [(r.wave, r.passed) for r in got.results] == [(1, True)]
    assert got.results[0].figures["new"]["requests"] == 40
    assert clock.sleeps == [1, 2, 4, 5]     # backoff, capped; a failed poll does not end the wait


def test_a_failed_gate_raises_rollout_failed_naming_the_gate_with_its_figures() -> None:
    failed = ("rollout.gate_failed", {"wave": 1, "outcome": "paused", "figures": FIGURES,
                                      "reasons": ["error rate 100.0% (40/40) exceeds 5.0%"]})
    with pytest.raises(RolloutFailed) as caught:
        run_wait([status("running"), status("paused", failed, reason="error rate 100.0% (40/40) exceeds 5.0%")])
    text = str(caught.value)
    assert "the gate failed at wave 1/1: error rate 100.0% (40/40) exceeds 5.0%" in text
    assert "new version: 1 device(s), 40 requests, 40 errors (100.0%), p50 0.2 ms" in text
    assert [(w.wave, w.passed) for w in caught.value.waves] == [(1, False)]
    assert caught.value.status.state == "paused"


def test_an_operators_pause_is_waited_out_until_the_timeout() -> None:
    paused = status("paused", ("rollout.gate_failed", {"wave": 1, "reasons": ["x"]}), ("rollout.resume", {}),
                    ("rollout.pause", {}))
    with pytest.raises(RolloutTimeout, match="still paused at wave 1/1 after 10 s") as caught:
        run_wait([paused], timeout=10)
    assert caught.value.status is paused


def test_an_abort_without_a_gate_is_a_failure_with_its_reason() -> None:
    with pytest.raises(RolloutFailed, match="aborted: bad canary"):
        run_wait([status("aborted", ("rollout.abort", {"reason": "bad canary"}), reason="bad canary")])


def test_importing_the_client_loads_no_server_code() -> None:
    code = ("import sys; from edgeml.fleet import Client; "
            "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'amqtt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert edgeml.fleet.__all__ == ["Client", "ClientConfig"]


def test_config_comes_from_arguments_then_the_environment_then_the_login_file(monkeypatch) -> None:
    from edgeml.fleet import ClientConfig

    ClientConfig("http://from-file:8480", "efl_file").save()
    assert ClientConfig.resolve() == ClientConfig("http://from-file:8480", "efl_file")
    monkeypatch.setenv("EDGEML_FLEET_URL", "http://from-env:8480")
    assert ClientConfig.resolve() == ClientConfig("http://from-env:8480", "efl_file")
    with Client("http://from-args:8480", "efl_args") as fleet:
        assert fleet.config == ClientConfig("http://from-args:8480", "efl_args")


def test_captures_are_read_page_by_page_up_to_the_limit() -> None:
    pages = {None: {"captures": [{"capture_id": "c1", "trigger": "drift"}, {"capture_id": "c2"}], "next_cursor": "x"},
             "x": {"captures": [{"capture_id": "c3"}, {"capture_id": "c4"}], "next_cursor": "y"}}
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params.get("cursor"))
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    with make_client(handler) as fleet:
        got = list(fleet.list_captures(model="m", trigger="drift", limit=3))
    assert [c.capture_id for c in got] == ["c1", "c2", "c3"] and got[0].trigger == "drift"
    assert asked == [None, "x"]      # the third page is never asked for
