"""Chaos: while a device emits a known number of messages, the broker goes away for seconds and the
device is SIGKILLed in the middle of the outage — afterwards every sequence number is in the fleet's
store exactly once. Against a real Mosquitto (TLS, passwords, ACLs, persistence) and the embedded broker.
Then: two server processes sharing one PostgreSQL and one broker split the stream without loss or double."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from edgeml.fleet.bootstrap import create_first_admin
from edgeml.fleet.ingest import IngestService
from edgeml.fleet.server import FleetServer, ServerConfig
from edgeml.fleet.store import Store, sqlite_url
from edgeml.fleet.store.telemetry_models import DeviceMessage
from tests.fleet.server_process import fleet_server
from tests.support.emitter_process import running_emitter, start_emitter
from tests.support.postgres import temporary_database
from tests.support.restartable_mosquitto import RestartableMosquitto
from tests.support.services import free_port
from tests.support.tls import make_pki


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _enroll(http: httpx.Client | TestClient, admin: str) -> dict:
    r = http.post("/v1/enrollment-tokens", headers=_auth(admin), json={"group": "lab", "tags": []})
    assert r.status_code == 201, r.text
    r = http.post("/v1/enroll", headers=_auth(r.json()["token"]),
                  json={"name": "cam", "hardware": {"arch": "x86_64"}, "installed": {}})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _emitter_config(path: Path, device: dict, broker_url: str, total: int, rate: float, ca: Path | None = None) -> Path:
    path.write_text(json.dumps({
        "spool": str(path.with_suffix(".spool.db")), "device": device["device_id"], "broker": broker_url,
        "username": device["mqtt"]["username"], "password": device["mqtt"]["password"],
        "ca_file": str(ca) if ca else None, "total": total, "rate": rate,
    }))
    return path


def _stored(db: str, device_id: str, total: int, timeout: float = 60) -> list[int]:
    store = Store.open(db, migrate=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with store.session() as s:
                seqs = [q for (q,) in s.query(DeviceMessage.seq).filter(DeviceMessage.device_id == device_id)]
            if len(seqs) >= total or time.monotonic() > deadline:
                return sorted(seqs)
            time.sleep(0.2)
    finally:
        store.close()


def _stored_counts(*ingests: IngestService, total: int, timeout: float = 10) -> list[int]:
    """The ingests' own counts of stored messages once they add up to ``total`` (or the timeout passes).

    A batch is committed before its writer thread adds it to the stats, so a reader that has just seen the
    last rows in the database may still be a moment ahead of the counters."""
    deadline = time.monotonic() + timeout
    while sum(i.stats.stored for i in ingests) < total and time.monotonic() < deadline:
        time.sleep(0.05)
    return [i.stats.stored for i in ingests]


@pytest.mark.slow
def test_mosquitto_outage_and_device_sigkill_lose_nothing(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    db = sqlite_url(tmp_path / "fleet.db")
    admin = create_first_admin(db)
    files = tmp_path / "mosquitto"
    broker = RestartableMosquitto(tmp_path / "broker", password_file=files / "passwords", acl_file=files / "acl",
                                  pki=pki)
    server = FleetServer(ServerConfig(data_dir=tmp_path / "data", db=db, broker=f"mqtts://127.0.0.1:{broker.port}",
                                      broker_ca=pki.ca_file, mosquitto_dir=files))
    server.start()  # writes the password/ACL files; its ingest connects once the broker is up
    try:
        with TestClient(server.app()) as http:
            device = _enroll(http, admin)
        broker.start()
        assert server.ingest.connected.wait(20), "the fleet's ingest never subscribed"
        total = 500
        cfg = _emitter_config(tmp_path / "emitter.json", device, f"mqtts://127.0.0.1:{broker.port}", total, 150,
                              pki.ca_file)
        with running_emitter(cfg) as first:
            time.sleep(1.0)
            broker.stop()                     # outage
            time.sleep(1.0)
            first.send_signal(signal.SIGKILL)  # the device dies in the middle of it
            first.wait(10)
        with running_emitter(cfg) as second:
            time.sleep(1.5)
            broker.start()                    # back after several seconds
            out, _ = second.communicate(timeout=120)
            assert second.returncode == 0, out.decode()
        seqs = _stored(db, device["device_id"], total)
        assert seqs == list(range(1, total + 1))   # every one, exactly once (the key forbids twice)
        assert _stored_counts(server.ingest, total=total) == [total]
    finally:
        server.stop()
        broker.stop()


@pytest.mark.slow
def test_embedded_broker_restart_and_device_sigkill_lose_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite_url(data / "fleet.db")
    admin = create_first_admin(db)
    port, broker_port = free_port(), free_port()
    total = 400
    with fleet_server(data, port=port, broker_port=broker_port) as server:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            device = _enroll(http, admin)
        cfg = _emitter_config(tmp_path / "emitter.json", device, f"mqtt://127.0.0.1:{broker_port}", total, 120)
        first = start_emitter(cfg)
        time.sleep(1.2)
    # the server (and its embedded broker) is stopped now: the device spools
    try:
        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        with running_emitter(cfg) as second:
            time.sleep(1.0)
            with fleet_server(data, port=port, broker_port=broker_port):
                out, _ = second.communicate(timeout=120)
                assert second.returncode == 0, out.decode()
                seqs = _stored(db, device["device_id"], total)
    finally:
        if first.poll() is None:
            first.kill()
    assert seqs == list(range(1, total + 1))


@pytest.mark.slow
@pytest.mark.postgres
def test_two_servers_on_one_postgres_split_one_stream(tmp_path: Path) -> None:
    files = tmp_path / "mosquitto"
    with temporary_database() as db:
        admin = create_first_admin(db)
        broker = RestartableMosquitto(tmp_path / "broker", password_file=files / "passwords", acl_file=files / "acl")
        # one server writes the broker files (as an operator would with --mosquitto-dir), both ingest
        first = FleetServer(ServerConfig(data_dir=tmp_path / "a", db=db, port=free_port(),
                                         broker=f"mqtt://127.0.0.1:{broker.port}", mosquitto_dir=files))
        first.start()
        second = None
        try:
            with TestClient(first.app()) as http:
                device = _enroll(http, admin)
            broker.start()
            second = FleetServer(ServerConfig(data_dir=tmp_path / "b", db=db, port=free_port(),
                                              broker=f"mqtt://127.0.0.1:{broker.port}"))
            second.start()
            assert first.ingest.connected.wait(15) and second.ingest.connected.wait(15)
            total = 1500
            cfg = _emitter_config(tmp_path / "emitter.json", device, f"mqtt://127.0.0.1:{broker.port}", total, 1000)
            with running_emitter(cfg) as proc:
                out, _ = proc.communicate(timeout=120)
                assert proc.returncode == 0, out.decode()
            seqs = _stored(db, device["device_id"], total)
            assert seqs == list(range(1, total + 1))
            a, b = _stored_counts(first.ingest, second.ingest, total=total)
            assert a + b == total and a > 0 and b > 0, (a, b)   # both processes took part, none stored twice
        finally:
            first.stop()
            if second is not None:
                second.stop()
            broker.stop()
