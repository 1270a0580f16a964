"""What UpdateMachine itself does around each state (tests/updates/machine_rig.py: the real machine,
states, store and loader): what ``begin`` records, how a state's exception becomes the ``fail`` exit
with its reason, the ``update`` event each transition reports, what going idle clears, and the
boot-loop guard's counting and wording."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeml.errors import UpdateError
from edgeml.protocol import UpdateEvent as E
from edgeml.protocol import UpdateState as S
from edgeml_agent.updates import machine
from edgeml_agent.updates.context import UpdateContext
from edgeml_agent.updates.health import VersionHealth
from edgeml_agent.updates.machine import DEFAULT_MAX_RESTARTS, describe, recover_before_load
from edgeml_agent.updates.record import UpdateRecord
from tests.updates.machine_rig import Bundles, MachineRig


def test_begin_records_the_update_before_anything_runs(rig: MachineRig) -> None:
    rig.health.live["1.0.0"] = VersionHealth(40, 2, 1.5, 3.0)
    old = rig.records.load()
    old.reason, old.probation_started, old.last_serial = "the previous update's reason", 123.0, 5
    rig.records.save(old)
    wire = rig.wire("2.0.0", serial=77)
    state = rig.parse(wire)
    rig.machine.begin(state, state.models[0])
    rec = rig.records.load()          # persisted: a crash now resumes in downloading
    assert rec.state == S.DOWNLOADING and rec.restarts == 0
    assert rec.desired == wire.decode()
    assert (rec.model, rec.target_version, rec.previous_version) == ("m", "2.0.0", "1.0.0")
    assert rec.bundle_sha256 == state.models[0].sha256
    assert rec.reason is None and rec.probation_started is None
    assert rec.last_serial == 77
    assert rec.baseline == {"requests": 40, "errors": 2, "error_rate": 0.05, "p50_ms": 1.5, "p95_ms": 3.0}
    assert [h[1:] for h in rec.history] == [[S.IDLE, E.UPDATE, S.DOWNLOADING]]
    assert rig.events.seen == [{"kind": "update", "state": S.DOWNLOADING, "transition": E.UPDATE, "source": S.IDLE,
                                "model": "m", "version": "2.0.0", "previous": "1.0.0", "reason": None}]


def test_begin_never_lowers_the_last_serial(rig: MachineRig) -> None:
    old = rig.records.load()
    old.last_serial = 10**15
    rig.records.save(old)
    state = rig.parse(rig.wire("2.0.0", serial=3))
    rig.machine.begin(state, state.models[0])
    assert rig.records.load().last_serial == 10**15


def test_a_first_install_has_no_previous_version_and_no_baseline(tmp_path: Path, bundles: Bundles,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    r = MachineRig(tmp_path, bundles, monkeypatch)
    state = r.parse(r.wire("2.0.0"))
    r.machine.begin(state, state.models[0])
    rec = r.records.load()
    assert rec.previous_version is None and rec.baseline == {}
    assert r.health.asked == []


def test_going_idle_clears_the_document_but_keeps_what_happened(rig: MachineRig) -> None:
    rec = rig.update("2.0.0")
    saved = rig.records.load()
    assert saved.state == S.IDLE and saved.restarts == 0
    assert (saved.desired, saved.bundle_sha256, saved.probation_started) == (None, None, None)
    assert (saved.model, saved.target_version, saved.committed) == ("m", "2.0.0", {"m": "2.0.0"})
    assert [h[1:] for h in saved.history] == [[h[1], h[2], h[3]] for h in rec.history]
    assert [str(h[2]) for h in saved.history] == ["update", "downloaded", "verified", "staged", "smoke_ok",
                                                  "switched", "healthy", "done"]
    times = [float(h[0]) for h in saved.history]
    assert times == sorted(times) and all(t == round(t, 3) for t in times)
    assert abs(saved.entered_at - times[-1]) < 1      # stamped as it entered idle
    reported = [(e["source"], e["transition"], e["state"]) for e in rig.events.seen if e["kind"] == "update"]
    assert reported == [(h[1], h[2], h[3]) for h in saved.history]


def test_a_state_in_the_middle_of_its_side_effect_is_saved_as_entered(rig: MachineRig) -> None:
    seen: list[UpdateRecord] = []
    rig.hooks[(S.STAGING, "enter")] = lambda: seen.append(rig.records.load())
    rig.update("2.0.0")
    assert seen[0].state == S.STAGING and seen[0].history[-1][1:] == [S.VERIFYING, E.VERIFIED, S.STAGING]
    assert seen[0].desired is not None and seen[0].entered_at > 0


class _Raising:
    def __init__(self, name: S, exc: BaseException) -> None:
        self.name, self.exc = name, exc

    def on_enter(self, ctx: UpdateContext, rec: UpdateRecord) -> E:
        raise self.exc


@pytest.mark.parametrize(("exc", "reason", "logged"), [
    (UpdateError("the disk is full"), "the disk is full", "update m@2.0.0 failed in staging: the disk is full"),
    (ValueError("a bug"), "ValueError: a bug", "update failed in staging"),   # with the traceback
])
def test_an_exception_in_a_state_is_its_fail_exit_with_the_reason(rig: MachineRig, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture, exc: Exception,
                                                                   reason: str, logged: str) -> None:
    monkeypatch.setitem(machine.STATES, S.STAGING, _Raising(S.STAGING, exc))
    with caplog.at_level("ERROR", logger="edgeml_agent.updates"):
        rec = rig.update("2.0.0")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [logged]     # what an operator reads in the journal
    assert (errors[0].exc_info is not None) == isinstance(exc, ValueError)
    assert rig.chain(rec) == ["downloading", "verifying", "staging", "failed", "idle"]
    assert rec.reason == reason and rec.refused == {"m@2.0.0": reason}
    failed = next(e for e in rig.events.seen if e["state"] == S.FAILED)
    assert (failed["source"], failed["transition"], failed["reason"]) == (S.STAGING, E.FAIL, reason)
    assert rig.serving() == "1.0.0"


def test_run_until_idle_returns_at_once_when_idle(rig: MachineRig) -> None:
    rec = rig.machine.run_until_idle()
    assert rec.state == S.IDLE and rec.history == [] and rig.points == []


def test_recover_in_idle_changes_nothing(rig: MachineRig) -> None:
    rig.records.save(UpdateRecord(restarts=0))
    before = rig.records.path.stat().st_mtime_ns
    rec = recover_before_load(rig.records, rig.services.store)
    assert rec.restarts == 0 and rig.records.path.stat().st_mtime_ns == before


@pytest.mark.parametrize(("restarts", "left"), [(DEFAULT_MAX_RESTARTS - 1, False), (DEFAULT_MAX_RESTARTS, True)])
def test_the_default_restart_limit(rig: MachineRig, restarts: int, left: bool) -> None:
    rig.records.save(UpdateRecord(state=S.STAGING, model="m", target_version="2.0.0", restarts=restarts))
    rec = recover_before_load(rig.records, rig.services.store)
    assert rig.records.load().state == (S.FAILED if left else S.STAGING)
    assert rec.restarts == (0 if left else restarts + 1) == rig.records.load().restarts
    assert rec.reason == (f"the agent restarted {DEFAULT_MAX_RESTARTS} times in staging" if left else None)


def test_a_boot_loop_into_a_rollback_says_so_and_points_back(rig: MachineRig) -> None:
    rig.install("2.0.0")
    rig.records.save(UpdateRecord(state=S.PROBATION, model="m", target_version="2.0.0", previous_version="1.0.0",
                                  restarts=2))
    rec = recover_before_load(rig.records, rig.services.store)
    assert rec.reason == "the agent restarted 2 times in probation: rolling back"
    assert rig.services.store.current("m") == "1.0.0"


def test_a_boot_loop_without_a_previous_version_leaves_the_pointer(rig: MachineRig) -> None:
    rig.install("2.0.0")
    rig.records.save(UpdateRecord(state=S.SWITCHING, model="m", target_version="2.0.0", restarts=2))
    assert recover_before_load(rig.records, rig.services.store).state == S.ROLLING_BACK
    assert rig.services.store.current("m") == "2.0.0"


def test_a_boot_loop_before_the_switch_leaves_the_pointer(rig: MachineRig) -> None:
    rig.records.save(UpdateRecord(state=S.SMOKE_TESTING, model="m", target_version="2.0.0", previous_version="0.9.0",
                                  restarts=2))
    rec = recover_before_load(rig.records, rig.services.store)
    assert rec.state == S.FAILED and rec.reason == "the agent restarted 2 times in smoke_testing"
    assert rig.services.store.current("m") == "1.0.0"


def test_the_table_printed_in_process() -> None:
    lines = describe().splitlines()
    assert len(lines) == len(machine.TRANSITIONS)
    assert lines[0] == "          idle --update--> downloading"
    assert "     switching --boot_loop--> rolling_back" in lines
