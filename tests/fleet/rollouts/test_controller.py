"""The controller's decisions on a real store with inserted telemetry rows (the ingest's tables), a
controllable clock and an in-memory publisher (the MQTT seam; the end-to-end test uses the real one)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from edgeml.bundle.keys import TrustStore
from edgeml.desired import parse_desired
from edgeml.errors import DesiredStateError, RolloutError
from edgeml.fleet.rollouts import Gates, Selector, service
from edgeml.fleet.rollouts.controller import RolloutController, acquire_lease
from edgeml.fleet.rollouts.desired_docs import fleet_signing_key
from edgeml.fleet.store import Store
from edgeml.fleet.store.models import AuditEntry, Bundle, DesiredDocument, Device, Rollout, RolloutDevice
from edgeml.fleet.store.telemetry_models import DeviceEvent, ModelWindow
from edgeml.telemetry.latency import bucket_index, empty_histogram

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # only orders rows (enrolment, upload)


@dataclass
class MemoryPublisher:
    """Takes and acknowledges at once while ``connected``."""

    connected: bool = True
    resync: bool = False
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    acked: list[tuple[str, int]] = field(default_factory=list)

    def publish(self, device_id: str, serial: int, wire: bytes) -> bool:
        if self.connected:
            self.sent.append((device_id, wire))
            self.acked.append((device_id, serial))
        return self.connected

    def take_acked(self) -> list[tuple[str, int]]:
        out, self.acked = self.acked, []
        return out

    def take_resync(self) -> bool:
        out, self.resync = self.resync, False
        return out


class Clock:
    def __init__(self) -> None:
        # rollouts are stamped with the real time when created: the test clock starts there
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    store: Store
    clock: Clock
    publisher: MemoryPublisher
    controller: RolloutController
    devices: list[str]
    seq: dict[str, int] = field(default_factory=dict)

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)
        assert self.controller.tick()

    def event(self, device: str, state: str, version: str = "2.0.0", **extra: Any) -> None:
        self.seq[device] = self.seq.get(device, 0) + 1
        with self.store.session() as s:
            s.add(DeviceEvent(device_id=device, seq=self.seq[device], ts=self.clock.now, kind="update",
                              body={"event": "update", "state": state, "model": "m", "version": version,
                                    "previous": "1.0.0", **extra}))

    def window(self, device: str, version: str, *, requests: int = 50, errors: int = 0, ms: float = 2.0) -> None:
        self.seq[device] = self.seq.get(device, 0) + 1
        latency = empty_histogram()
        latency[bucket_index(ms)] = requests
        with self.store.session() as s:
            s.add(ModelWindow(device_id=device, seq=self.seq[device], model="m", version=version, ts=self.clock.now,
                              window_s=1.0, requests=requests, errors=errors, latency=latency, stats={}))

    def rollout(self, **kwargs: Any) -> str:
        spec = service.RolloutSpec(selector=kwargs.pop("selector", Selector()),
                                   waves=kwargs.pop("waves", [25, 50, 100]),
                                   gates=kwargs.pop("gates", Gates()), observe_s=kwargs.pop("observe_s", 10),
                                   wave_timeout_s=kwargs.pop("wave_timeout_s", 60), **kwargs)
        with self.store.session() as s:
            return service.create(s, _get(s, "b2" * 32), spec, "tester")[0].id

    def state(self, rollout_id: str) -> tuple[str, int, dict[str, str]]:
        with self.store.session() as s:
            r = s.get(Rollout, rollout_id)
            assert r is not None
            rows = s.scalars(select(RolloutDevice).where(RolloutDevice.rollout_id == r.id))
            members = {m.device_id: m.state for m in rows}
            return r.state, r.current_wave, members

    def desired(self, device: str) -> Any:
        trust = TrustStore([fleet_signing_key(self.store).public_key])
        with self.store.session() as s:
            row = s.get(DesiredDocument, device)
            assert row is not None, f"no desired state for {device}"
            return parse_desired(row.wire.encode(), trust, device_id=device, now=self.clock())

    def audit(self, action: str) -> list[dict[str, Any]]:
        with self.store.session() as s:
            entries = s.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
            return [a.details for a in entries]

    def install_wave(self, devices: list[str], *, ms: float = 2.0, errors: int = 0) -> None:
        """The devices commit the new version; the next tick starts the observation, during which they
        send telemetry, and 11 s later (observe_s = 10) the wave is judged."""
        for d in devices:
            self.event(d, "downloading")
            self.event(d, "committed")
            self.event(d, "idle")
        self.tick()
        for d in devices:
            self.window(d, "2.0.0", ms=ms, errors=errors)
        self.tick(11)


def _get(session: Any, bundle_id: str) -> Bundle:
    row = session.get(Bundle, bundle_id)
    assert row is not None
    return row


def _bundle(version: str, bid: str, target: str = "x86-cpu") -> Bundle:
    return Bundle(id=bid, name="m", version=version, target=target, runtime="onnxruntime", precision="fp32",
                  key_id="k", size=1234, manifest={}, uploaded_at=T0, uploaded_by="ci")


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    """On SQLite and on a real PostgreSQL (the lease and row locks matter there)."""
    store = Store.open(db_url)
    devices = [f"dev-{i}" for i in range(4)]
    with store.session() as s:
        s.add_all([_bundle("1.0.0", "b1" * 32), _bundle("2.0.0", "b2" * 32)])
        s.add(Bundle(id="c1" * 32, name="other", version="5.0.0", target="x86-cpu", runtime="onnxruntime",
                     precision="fp32", key_id="k", size=9, manifest={}, uploaded_at=T0, uploaded_by="ci"))
        for i, d in enumerate(devices):
            s.add(Device(id=d, name=d, group="cams", tags=["eu"] if i % 2 == 0 else ["us"], hardware={},
                         installed={"m": "1.0.0"}, enrolled_at=T0 + timedelta(seconds=i), mqtt_password_hash="x"))
    clock, publisher = Clock(), MemoryPublisher()
    w = World(store, clock, publisher, RolloutController(store, publisher, clock=clock), devices)
    # the previous version's health before the rollout: 2 ms p50, no errors
    clock.advance(-30)
    for d in devices:
        w.window(d, "1.0.0", ms=2.0)
    clock.advance(30)
    yield w
    store.close()


def test_a_good_version_goes_wave_by_wave_to_every_device(world: World) -> None:
    # given 4 devices and waves 25,50,100
    rid = world.rollout()
    # when the controller ticks, then only the first wave's device gets a signed desired state
    world.tick()
    state, wave, members = world.state(rid)
    assert (state, wave) == ("running", 0) and members == {"dev-0": "sent", "dev-1": "pending", "dev-2": "pending",
                                                           "dev-3": "pending"}
    doc = world.desired("dev-0")
    assert doc.rollout == rid and [(m.name, m.version, m.sha256, m.size, m.url, m.rollback) for m in doc.models] == [
        ("m", "2.0.0", "b2" * 32, 1234, f"/v1/bundles/{'b2' * 32}/download", False)]
    assert doc.probation == {"max_error_rate": 0.05, "max_latency_regression": 0.5}
    assert [d for d, _ in world.publisher.sent] == ["dev-0"]
    # each wave: install, observe for 10 s with healthy telemetry, advance
    for wave, wave_devices in enumerate((["dev-0"], ["dev-1"], ["dev-2", "dev-3"])):
        assert world.state(rid)[1] == wave
        world.install_wave(wave_devices)
        world.tick()          # the next wave's devices are sent the new version
    state, wave, members = world.state(rid)
    assert state == "completed" and set(members.values()) == {"installed"}
    passed = world.audit("rollout.wave_passed")
    assert [p["wave"] for p in passed] == [1, 2, 3]
    assert passed[0]["figures"]["new"]["requests"] == 50 and passed[0]["figures"]["previous"]["p50_ms"] == 2.0
    assert world.audit("rollout.completed")[0]["devices"] == {"installed": 4}


def test_an_error_rate_over_the_gate_pauses_and_sends_the_wave_back(world: World) -> None:
    rid = world.rollout(waves=[50, 100])
    world.tick()
    world.install_wave(["dev-0", "dev-1"], errors=20)   # 40 % errors on the new version
    state, wave, members = world.state(rid)
    assert (state, wave) == ("paused", 0)
    assert members == {"dev-0": "reverted", "dev-1": "reverted", "dev-2": "pending", "dev-3": "pending"}
    failed = world.audit("rollout.gate_failed")[0]
    assert failed["outcome"] == "paused" and "error rate 40.0% (40/100) exceeds 5.0%" in failed["reasons"][0]
    assert failed["figures"]["new"]["errors"] == 40 and failed["reverted"] == ["dev-0", "dev-1"]
    back = world.desired("dev-0")
    assert (back.models[0].version, back.models[0].rollback, back.models[0].sha256) == ("1.0.0", True, "b1" * 32)
    # a paused rollout does nothing more, however long we wait
    world.tick(120)
    assert world.state(rid)[2]["dev-2"] == "pending"


def test_latency_regression_against_the_previous_version_aborts_when_asked(world: World) -> None:
    rid = world.rollout(waves=[50, 100], on_failure="abort")
    world.tick()
    world.install_wave(["dev-0", "dev-1"], ms=20.0)   # 10x slower than 1.0.0
    state, _, members = world.state(rid)
    assert state == "aborted" and members["dev-0"] == members["dev-1"] == "reverted"
    reason = world.audit("rollout.gate_failed")[0]["reasons"][0]
    assert "p50 latency 20.00 ms vs 2.00 ms on the previous version" in reason


def test_a_device_that_rolls_back_by_itself_fails_the_wave_at_once(world: World) -> None:
    rid = world.rollout(waves=[50, 100])
    world.tick()
    world.event("dev-0", "probation")
    world.event("dev-0", "rolling_back", reason="error rate 100.0% over 20 requests exceeds 5.0%")
    world.event("dev-0", "failed", reason="error rate 100.0% over 20 requests exceeds 5.0%")
    world.event("dev-0", "idle", reason="error rate 100.0% over 20 requests exceeds 5.0%")   # as agents do
    world.tick()
    state, _, members = world.state(rid)
    assert state == "paused" and members["dev-0"] == "reverted" and members["dev-1"] == "reverted"
    assert "dev-0 rolled back by itself: error rate 100.0%" in world.audit("rollout.gate_failed")[0]["reasons"][0]


def test_a_device_that_refuses_the_version_before_switching_is_not_said_to_have_rolled_back(world: World) -> None:
    rid = world.rollout(waves=[50, 100])
    world.tick()
    world.event("dev-0", "smoke_testing", source="staging")
    world.event("dev-0", "failed", source="smoke_testing", reason="m@2.0.0: smoke test output 'y' differs")
    world.tick()
    state, _, _ = world.state(rid)
    (reason,) = world.audit("rollout.gate_failed")[0]["reasons"]
    assert state == "paused"
    assert reason == "device dev-0 refused it in smoke_testing: m@2.0.0: smoke test output 'y' differs"


def test_the_version_to_go_back_to_is_learnt_from_the_agent_when_the_fleet_did_not_know_it(world: World) -> None:
    rid = world.rollout(waves=[100])
    with world.store.session() as s:   # e.g. enrolled mid-rollout: no telemetry yet, nothing recorded
        for device in s.scalars(select(Device)):
            device.installed = {}
    world.tick()
    world.event("dev-0", "downloading", previous="0.9.0")
    world.tick()
    with world.store.session() as s:
        previous = {m.device_id: m.previous_version for m in s.scalars(select(RolloutDevice))
                    if m.rollout_id == rid}
    assert previous["dev-0"] == "0.9.0" and previous["dev-1"] is None


def test_offline_devices_are_counted_after_the_wave_timeout_not_waited_on(world: World) -> None:
    rid = world.rollout(waves=[50, 100], wave_timeout_s=30)
    world.tick()
    world.install_wave(["dev-0"])          # dev-1 never answers
    assert world.state(rid)[2]["dev-1"] == "sent"
    world.tick(25)                          # past the 30 s wave timeout: dev-1 offline, observation starts
    members = world.state(rid)[2]
    assert members["dev-1"] == "offline"
    assert world.audit("rollout.devices_offline")[0]["devices"] == ["dev-1"]
    world.window("dev-0", "2.0.0")
    world.tick(11)
    world.tick()
    assert world.state(rid)[1] == 1 and world.state(rid)[2]["dev-2"] == "sent"


def test_a_wave_where_no_device_answers_fails(world: World) -> None:
    rid = world.rollout(waves=[25, 100], wave_timeout_s=30)
    world.tick()
    world.tick(31)
    assert world.state(rid)[0] == "paused"
    assert "no device of wave 1 installed 2.0.0 within 30 s" in world.audit("rollout.gate_failed")[0]["reasons"][0]


def test_too_little_traffic_waits_then_fails_at_the_timeout(world: World) -> None:
    rid = world.rollout(waves=[50, 100], gates=Gates(min_requests=500), wave_timeout_s=40)
    world.tick()
    world.install_wave(["dev-0", "dev-1"])
    assert world.state(rid)[0] == "running"   # 100 requests < 500: keep observing
    world.tick(30)
    assert world.state(rid)[0] == "paused"
    assert "only 100 requests" in world.audit("rollout.gate_failed")[0]["reasons"][0]


def test_devices_enrolled_into_the_selector_during_the_rollout_get_its_version(world: World) -> None:
    rid = world.rollout(selector=Selector(tag="eu"), waves=[50, 100])
    world.tick()
    assert set(world.state(rid)[2]) == {"dev-0", "dev-2"}
    with world.store.session() as s:
        s.add(Device(id="dev-new", name="n", group=None, tags=["eu"], hardware={}, installed={"m": "1.0.0"},
                     enrolled_at=world.clock.now, mqtt_password_hash="x"))
        s.add(Device(id="dev-other", name="o", group=None, tags=["us"], hardware={}, installed={},
                     enrolled_at=world.clock.now, mqtt_password_hash="x"))
    world.tick()
    members = world.state(rid)[2]
    assert members["dev-new"] == "sent" and "dev-other" not in members
    assert world.desired("dev-new").models[0].version == "2.0.0"
    assert world.audit("rollout.devices_joined")[0]["devices"] == ["dev-new"]


def test_abort_sends_every_updated_device_back(world: World) -> None:
    rid = world.rollout(waves=[50, 100])
    world.tick()
    world.install_wave(["dev-0", "dev-1"])   # wave 1 passes: wave 2 is sent the version in the same step
    assert world.state(rid)[2] == {"dev-0": "installed", "dev-1": "installed", "dev-2": "sent", "dev-3": "sent"}
    with world.store.session() as s:
        service.abort(s, rid, "changed my mind")
    world.tick()
    state, _, members = world.state(rid)
    assert state == "aborted" and set(members.values()) == {"reverted"}
    assert world.desired("dev-1").models[0].rollback is True
    assert world.audit("rollout.aborted")[0]["reason"] == "changed my mind"


def test_pause_and_resume_and_the_rules_of_the_operations(world: World) -> None:
    rid = world.rollout(waves=[50, 100])
    with world.store.session() as s:
        with pytest.raises(RolloutError, match="abort it"):
            service.create(s, _get(s, "b2" * 32), service.RolloutSpec(Selector(), [100], Gates()), "x")
        with pytest.raises(RolloutError, match="no enrolled device matches group=nowhere"):
            service.create(s, _get(s, "c1" * 32), service.RolloutSpec(Selector(group="nowhere"), [100], Gates()), "x")
        with pytest.raises(RolloutError, match="only a paused rollout"):
            service.resume(s, rid)
        service.pause(s, rid)
    world.tick()
    # paused before the controller gave it its members: nothing was sent
    assert world.state(rid)[2].get("dev-0") is None and world.publisher.sent == []
    with world.store.session() as s:
        service.resume(s, rid)
    world.tick()
    assert world.state(rid)[2]["dev-0"] == "sent"


def test_serials_rise_and_documents_keep_other_models(world: World) -> None:
    rid = world.rollout(waves=[100])
    world.tick()
    first = world.desired("dev-0")
    with world.store.session() as s:
        spec = service.RolloutSpec(Selector(), [100], Gates(), observe_s=10)
        service.create(s, _get(s, "c1" * 32), spec, "x")
    world.tick()
    second = world.desired("dev-0")
    assert second.serial > first.serial and [m.name for m in second.models] == ["m", "other"]
    # the agent refuses the older document once it accepted the newer one
    trust = TrustStore([fleet_signing_key(world.store).public_key])
    with pytest.raises(DesiredStateError, match="replay"):
        parse_desired(first.raw, trust, device_id="dev-0", now=world.clock(), last_serial=second.serial)
    assert rid


def test_unpublished_documents_are_sent_when_the_broker_is_back_and_all_after_a_reconnect(world: World) -> None:
    world.publisher.connected = False
    world.rollout(waves=[100])
    world.tick()
    assert world.publisher.sent == []
    world.publisher.connected = True
    world.tick()
    assert sorted(d for d, _ in world.publisher.sent) == world.devices
    world.tick()
    assert len(world.publisher.sent) == 4           # nothing twice without a reason
    world.publisher.resync = True                   # e.g. the broker restarted and forgot retained messages
    world.tick()
    assert len(world.publisher.sent) == 8
    assert json.loads(world.publisher.sent[-1][1])["key_id"] == fleet_signing_key(world.store).key_id


def test_only_the_lease_holder_acts(world: World) -> None:
    other = RolloutController(world.store, MemoryPublisher(), clock=world.clock, holder="other-server")
    assert world.controller.tick()
    assert not other.tick()                          # the first controller holds the lease
    world.controller.stop()                          # releases it
    assert other.tick()
    assert not acquire_lease(world.store, world.controller.holder, 10, world.clock.now)
    world.clock.advance(11)                          # the holder died: its lease expires
    assert acquire_lease(world.store, world.controller.holder, 10, world.clock.now)


# -- no pass on no data ---------------------------------------------------------------------------------

def test_a_wave_without_telemetry_is_not_passed_and_fails_at_the_timeout_saying_so(world: World) -> None:
    # given a wave whose devices install the new version and then send no telemetry of it (no traffic gate)
    rid = world.rollout(waves=[50, 100], gates=Gates(min_requests=0), wave_timeout_s=40)
    world.tick()
    for d in ("dev-0", "dev-1"):
        world.event(d, "committed")
    world.tick()                                    # the observation starts
    # when its observation window ends, then it is not passed: it keeps observing
    world.tick(11)
    assert world.state(rid)[:2] == ("running", 0) and not world.audit("rollout.wave_passed")
    # and at the wave timeout it fails, saying that no telemetry arrived
    world.tick(30)
    state, _, members = world.state(rid)
    assert state == "paused" and members["dev-2"] == "pending"
    (failed,) = world.audit("rollout.gate_failed")
    assert failed["reasons"][0] == ("no telemetry of m@2.0.0 arrived from wave 1's installed devices within the "
                                    "wave timeout (40 s of observation)")


def test_telemetry_that_arrives_late_is_judged_when_it_arrives(world: World) -> None:
    rid = world.rollout(waves=[50, 100], wave_timeout_s=60)
    world.tick()
    for d in ("dev-0", "dev-1"):
        world.event(d, "committed")
    world.tick()
    world.tick(11)                                  # window over, nothing arrived: still observing
    assert world.state(rid)[1] == 0
    world.window("dev-0", "2.0.0", ms=20.0)         # then a slow 2.0.0 reports
    world.tick(5)
    assert world.state(rid)[0] == "paused"          # judged on it: 10x slower than 1.0.0 fails the latency gate
    assert "p50 latency 20.00 ms" in world.audit("rollout.gate_failed")[0]["reasons"][0]


def test_a_wave_waits_until_enough_of_its_devices_reported(world: World) -> None:
    rid = world.rollout(waves=[50, 100], gates=Gates(min_reporting=1.0))
    world.tick()
    for d in ("dev-0", "dev-1"):
        world.event(d, "committed")
    world.tick()
    world.window("dev-0", "2.0.0")                  # only one of the two reports
    world.tick(11)
    assert world.state(rid)[1] == 0 and not world.audit("rollout.wave_passed")
    world.window("dev-1", "2.0.0")
    world.tick()
    assert world.state(rid)[1] == 1
    assert world.audit("rollout.wave_passed")[0]["figures"]["reporting"] == {"devices": 2, "installed": 2, "needed": 2}
