"""The update machine's table, as data: every state's exits (boot-loop ones included), unknown pairs
refused, the wire strings pinned, and the boot-loop guard taking the table's exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeml.protocol import UpdateEvent as E
from edgeml.protocol import UpdateState as S
from edgeml_agent.updates import machine
from edgeml_agent.updates.machine import (
    MAX_RESTARTS,
    TRANSITIONS,
    TransitionError,
    UpdateMachine,
    next_state,
    recover_before_load,
)
from edgeml_agent.updates.record import RecordFile, UpdateRecord
from edgeml_agent.updates.states import STATES, retry_pause

BEFORE_SWITCH = (S.DOWNLOADING, S.VERIFYING, S.STAGING, S.SMOKE_TESTING)
AFTER_SWITCH = (S.SWITCHING, S.PROBATION)


def test_wire_strings_are_unchanged() -> None:
    # persisted records and `update` events carry these strings; the fleet reads them
    assert [s.value for s in S] == ["idle", "downloading", "verifying", "staging", "smoke_testing", "switching",
                                    "probation", "committed", "rolling_back", "failed"]
    assert {e.value for e in E} == {"update", "downloaded", "verified", "staged", "smoke_ok", "switched",
                                   "healthy", "unhealthy", "rolled_back", "done", "fail", "boot_loop"}


def test_every_state_has_an_object_and_every_failure_and_boot_loop_exit_is_in_the_table() -> None:
    assert set(STATES) == set(S) - {S.IDLE}
    for state in STATES:
        assert (state, E.FAIL) in TRANSITIONS, state
        assert (state, E.BOOT_LOOP) in TRANSITIONS, state
    for state in BEFORE_SWITCH:
        assert TRANSITIONS[(state, E.FAIL)] == TRANSITIONS[(state, E.BOOT_LOOP)] == S.FAILED  # nothing to undo
    for state in AFTER_SWITCH:   # the new model was (maybe) live: go back
        assert TRANSITIONS[(state, E.FAIL)] == TRANSITIONS[(state, E.BOOT_LOOP)] == S.ROLLING_BACK
    assert TRANSITIONS[(S.ROLLING_BACK, E.FAIL)] == S.ROLLING_BACK     # keep going back, never forward
    assert TRANSITIONS[(S.COMMITTED, E.FAIL)] == S.IDLE                # a failed clean-up never rolls back
    path, state = [S.IDLE], S.IDLE
    for event in (E.UPDATE, E.DOWNLOADED, E.VERIFIED, E.STAGED, E.SMOKE_OK, E.SWITCHED, E.HEALTHY, E.DONE):
        state = next_state(state, event)
        path.append(state)
    assert path == [S.IDLE, S.DOWNLOADING, S.VERIFYING, S.STAGING, S.SMOKE_TESTING, S.SWITCHING, S.PROBATION,
                    S.COMMITTED, S.IDLE]


def test_the_table_prints_one_transition_a_line() -> None:
    out = subprocess.run([sys.executable, "-m", "edgeml_agent.updates.machine"], capture_output=True, text=True,
                         check=True, timeout=60).stdout.splitlines()
    assert len(out) == len(TRANSITIONS)
    assert "     switching --boot_loop--> rolling_back" in out


@pytest.mark.parametrize(("state", "event"), [(S.IDLE, E.HEALTHY), (S.DOWNLOADING, E.VERIFIED),
                                              (S.COMMITTED, E.UNHEALTHY), (S.FAILED, E.UPDATE)])
def test_an_unknown_pair_raises(state: S, event: E) -> None:
    with pytest.raises(TransitionError, match=f"no transition from {state} on {event}"):
        next_state(state, event)


class _Recorder:
    def event(self, kind: str, **data: object) -> None:
        pass


def test_a_state_returning_an_unknown_event_is_an_error_not_a_silent_retry(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    class Confused:
        name = S.VERIFYING

        def on_enter(self, ctx: object, rec: UpdateRecord) -> E:
            return E.HEALTHY   # not an exit of verifying

    records = RecordFile(tmp_path / "state.json")
    records.save(UpdateRecord(state=S.VERIFYING))
    ctx = _Context(records)
    monkeypatch.setitem(machine.STATES, S.VERIFYING, Confused())
    with pytest.raises(TransitionError):
        UpdateMachine(ctx).step(records.load())  # type: ignore[arg-type]
    assert records.load().state == S.VERIFYING   # nothing was persisted for the impossible move


class _Context:
    def __init__(self, records: RecordFile) -> None:
        self.records = records

    def checkpoint(self, state: S, point: str) -> None:
        pass

    def report(self, kind: str, **data: object) -> None:
        pass


class _Store:
    def __init__(self) -> None:
        self.pointers: list[tuple[str, str]] = []

    def set_current(self, name: str, version: str) -> None:
        self.pointers.append((name, version))


@pytest.mark.parametrize(("state", "target", "pointer_back"), [
    (S.DOWNLOADING, S.FAILED, False), (S.SMOKE_TESTING, S.FAILED, False), (S.SWITCHING, S.ROLLING_BACK, True),
    (S.PROBATION, S.ROLLING_BACK, True), (S.ROLLING_BACK, S.FAILED, True), (S.COMMITTED, S.IDLE, False),
])
def test_boot_loop_leaves_through_the_table(tmp_path: Path, state: S, target: S, pointer_back: bool) -> None:
    records = RecordFile(tmp_path / "state.json")
    limit = MAX_RESTARTS.get(state, machine.DEFAULT_MAX_RESTARTS)
    records.save(UpdateRecord(state=state, model="m", target_version="2.0.0", previous_version="1.0.0",
                              restarts=limit))
    store = _Store()
    rec = recover_before_load(records, store)  # type: ignore[arg-type]
    assert rec.state == target and rec.restarts == 0
    assert rec.history[-1][1:] == [state, E.BOOT_LOOP, target]
    assert records.load().state == target          # persisted before any model is loaded
    assert store.pointers == ([("m", "1.0.0")] if pointer_back else [])
    assert f"restarted {limit} times in {state}" in (rec.reason or "")


def test_a_restart_under_the_limit_resumes_the_saved_state(tmp_path: Path) -> None:
    records = RecordFile(tmp_path / "state.json")
    records.save(UpdateRecord(state=S.SWITCHING, model="m", target_version="2.0.0", previous_version="1.0.0"))
    rec = recover_before_load(records, _Store())  # type: ignore[arg-type]
    assert (rec.state, rec.restarts, rec.history) == (S.SWITCHING, 1, [])


def test_a_failed_rollback_is_retried_with_a_growing_pause() -> None:
    def rec(failures: int) -> UpdateRecord:
        history: list[list[float | str]] = [[0.0, "probation", "unhealthy", "rolling_back"]]
        history += [[float(i), "rolling_back", "fail", "rolling_back"] for i in range(failures)]
        return UpdateRecord(state=S.ROLLING_BACK, history=history)

    assert [retry_pause(rec(n)) for n in (0, 1, 2, 3, 8)] == [0.0, 1.0, 2.0, 4.0, 60.0]
