"""When the controller's loop steps a rollout: on a wake-up note (API, ingest) and at a deadline, and
never while nothing happens — driven through ``run_once`` (one pass of the loop) with a test clock, the
real ingest function (``telemetry_store.store_messages``) and the in-memory publisher."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, select

from edgeml.fleet.rollouts import Gates, service, wakeups
from edgeml.fleet.rollouts.controller import RolloutController
from edgeml.fleet.store.models import RolloutWakeup
from edgeml.fleet.telemetry_store import Envelope, store_messages
from edgeml.telemetry.latency import bucket_index, empty_histogram
from tests.fleet.rollouts.test_controller import MemoryPublisher, World, _get
from tests.fleet.rollouts.test_controller import world as world  # the fixture, re-exported


class Loop:
    """A controller driven one pass at a time; counts the SQL statements of each pass."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.publisher = MemoryPublisher()
        # a lease that outlives the test's clock jumps: each pass below is what a lease holder does
        self.controller = RolloutController(w.store, self.publisher, clock=w.clock, lease_ttl_s=3600,
                                            membership_s=3600)
        self.statements = 0
        event.listen(w.store.engine, "before_cursor_execute", self._count)
        self.seq = 100

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # queries only: on SQLite the store opens its transactions with an explicit BEGIN statement
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            self.statements += 1

    def run(self, seconds: float = 0.0) -> int:
        """Advance the clock, run one pass; the number of rollout steps it took."""
        self.w.clock.advance(seconds)
        before = self.controller.steps
        self.statements = 0
        self.controller.run_once()
        return self.controller.steps - before

    def ingest(self, device: str, kind: str, body: dict[str, Any]) -> None:
        """What the ingest does with one message from ``device``: the real store function."""
        self.seq += 1
        with self.w.store.session() as s:
            store_messages(s, [Envelope(device, self.seq, self.w.clock.now, kind, body)])

    def committed(self, device: str) -> None:
        self.ingest(device, "event", {"event": "update", "state": "committed", "model": "m", "version": "2.0.0",
                                      "previous": "1.0.0"})

    def telemetry(self, device: str, version: str = "2.0.0") -> None:
        latency = empty_histogram()
        latency[bucket_index(2.0)] = 50
        self.ingest(device, "telemetry", {"window_s": 1.0, "models": [
            {"model": "m", "version": version, "requests": 50, "errors": {}, "latency_ms": {"buckets": latency}}]})


@pytest.fixture
def loop(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    # the ingest's hook reads the time: it lives on the test's clock here, as the controller does
    monkeypatch.setattr(wakeups, "utcnow", lambda: world.clock.now)
    yield Loop(world)


def _create(w: World, **spec: Any) -> str:
    with w.store.session() as s:
        spec = {"waves": [50, 100], "gates": Gates(), "observe_s": 10, "wave_timeout_s": 60, **spec}
        row, _ = service.create(s, _get(s, "b2" * 32), service.RolloutSpec(selector=service.Selector(), **spec),
                                "tester")
        return row.id


def _notes(w: World) -> list[str]:
    with w.store.session() as s:
        return sorted(s.scalars(select(RolloutWakeup.key)))


def test_an_idle_controller_reads_one_row_and_steps_nothing(loop: Loop) -> None:
    # given no rollout at all: the first pass looks, then nothing
    loop.run()
    for _ in range(5):
        assert loop.run(1.0) == 0 and loop.statements == 1
    # given a running rollout whose first wave waits for its devices (deadline: the 60 s wave timeout)
    rid = _create(loop.w)
    assert _notes(loop.w) == [f"{rid}:control"]
    assert loop.run(1.0) == 1                           # the API's note: planned and wave 1 sent
    assert [d for d, _ in loop.publisher.sent] == ["dev-0", "dev-1"] and _notes(loop.w) == []
    # when nothing happens for 50 s, then no pass steps it, and a pass is one statement (the note table)
    for _ in range(50):
        assert loop.run(1.0) == 0
        assert loop.statements == 1, loop.statements


def test_update_events_from_the_ingest_wake_it_and_the_observation_end_is_a_deadline(loop: Loop) -> None:
    rid = _create(loop.w)
    loop.run(1.0)
    # when the ingest stores the agents' "committed" events, it leaves a note, and the next pass acts on it
    loop.committed("dev-0")
    loop.committed("dev-1")
    assert _notes(loop.w) == [f"{rid}:update"]
    assert loop.run(0.5) == 1
    assert loop.w.state(rid)[2]["dev-0"] == "installed" and loop.w.audit("rollout.observing")
    # telemetry during the observation window leaves no note (nothing is judged before its end)
    loop.telemetry("dev-0")
    loop.telemetry("dev-1")
    assert _notes(loop.w) == []
    assert loop.run(5.0) == 0
    # at the window's end (10 s), the deadline steps it: it passes, and wave 2 is sent at once
    assert loop.run(5.0) == 1
    state, wave, members = loop.w.state(rid)
    assert (state, wave) == ("running", 1) and members["dev-2"] == members["dev-3"] == "sent"


def test_telemetry_wakes_a_wave_that_waits_for_it(loop: Loop) -> None:
    rid = _create(loop.w)
    loop.run(1.0)
    loop.committed("dev-0")
    loop.committed("dev-1")
    loop.run(0.5)
    assert loop.run(10.0) == 1                          # window over with no data: not passed, keeps waiting
    assert loop.w.state(rid)[1] == 0
    assert loop.run(5.0) == 0                           # nothing arrives: nothing to do
    # when the new version's telemetry arrives, the ingest notes it and the next pass judges it
    loop.telemetry("dev-0")
    assert _notes(loop.w) == [f"{rid}:telemetry"]
    assert loop.run(0.5) == 1
    assert loop.w.state(rid)[1] == 1
    # telemetry of a version no wave waits for leaves no note
    loop.telemetry("dev-2", version="1.0.0")
    assert _notes(loop.w) == []


def test_a_paused_rollout_has_no_deadline_and_an_operators_resume_wakes_it(loop: Loop) -> None:
    rid = _create(loop.w)
    loop.run(1.0)
    with loop.w.store.session() as s:
        service.pause(s, rid)
    assert loop.run(0.5) == 1                           # the pause note: its deadline is dropped
    assert [loop.run(30.0) for _ in range(4)] == [0, 0, 0, 0]
    with loop.w.store.session() as s:
        service.resume(s, rid)
    assert loop.run(0.5) == 1


def test_a_server_without_the_lease_does_not_act_on_notes(loop: Loop) -> None:
    rid = _create(loop.w)
    assert loop.w.controller.tick()                     # another controller holds the lease
    loop.w.clock.advance(1)
    assert loop.run() == 0
    assert loop.w.state(rid)[2]["dev-0"] == "sent" and loop.publisher.sent == []


def test_the_doorbell_rings_only_controllers_of_the_same_store(loop: Loop) -> None:
    rang: list[str] = []
    wakeups.listen(loop.w.store, lambda: rang.append("this"))
    other_store = type("OtherStore", (), {})()
    wakeups.listen(other_store, lambda: rang.append("other"))
    wakeups.ring(loop.w.store)
    assert rang == ["this"]


def test_the_document_is_marked_published_only_when_acknowledged(loop: Loop) -> None:
    from edgeml.fleet.store.models import DesiredDocument

    loop.publisher.connected = True
    acks: list[tuple[str, int]] = []
    publish = loop.publisher.publish

    def hold_acks(device_id: str, serial: int, wire: bytes) -> bool:   # a broker slow to acknowledge
        ok = publish(device_id, serial, wire)
        acks.extend(loop.publisher.take_acked())
        return ok

    loop.publisher.publish = hold_acks  # type: ignore[method-assign]
    _create(loop.w)
    loop.run(1.0)
    with loop.w.store.session() as s:
        assert [d.published_at for d in s.scalars(select(DesiredDocument))] == [None, None]
    loop.publisher.acked = acks[:1]                     # the broker acknowledges dev-0's document
    loop.run(0.1)
    with loop.w.store.session() as s:
        published = {d.device_id: d.published_at for d in s.scalars(select(DesiredDocument))}
    assert isinstance(published["dev-0"], datetime) and published["dev-1"] is None


def test_the_periodic_look_for_new_members_steps_only_a_rollout_someone_joined(loop: Loop) -> None:
    from edgeml.fleet.store.models import Device

    loop.controller.membership_s = 30
    rid = _create(loop.w, waves=[100], wave_timeout_s=600)
    loop.run(1.0)
    assert loop.run(31.0) == 0                          # looked: nobody joined, nothing stepped
    # when a device is enrolled into the selector by another server process (no note here) ...
    with loop.w.store.session() as s:
        s.add(Device(id="dev-new", name="n", group="cams", tags=[], hardware={}, installed={"m": "1.0.0"},
                     enrolled_at=loop.w.clock.now, mqtt_password_hash="x"))
    assert loop.run(10.0) == 0
    # then the next look finds it and sends it the version
    assert loop.run(21.0) == 1
    assert loop.w.state(rid)[2]["dev-new"] == "sent"
    # and a device enrolled through this server leaves a note that wakes the controller at once
    with loop.w.store.session() as s:
        s.add(Device(id="dev-newer", name="n", group="cams", tags=[], hardware={}, installed={},
                     enrolled_at=loop.w.clock.now, mqtt_password_hash="x"))
    wakeups.note_and_ring(loop.w.store, wakeups.MEMBERSHIP)
    assert loop.run(0.5) == 1 and loop.w.state(rid)[2]["dev-newer"] == "sent"
