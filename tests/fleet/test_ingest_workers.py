"""Ingest as its own processes: two ``edgeml-fleet ingest`` workers on one PostgreSQL and a real Mosquitto,
on the shared subscription, one of them killed (SIGKILL) and restarted mid-stream: every (device, seq)
is stored exactly once and counted once in the roll-ups, and both workers took part. And
``serve --ingest-workers 1`` ingests through its child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from edgeml.errors import FleetError
from edgeml.fleet.server import FleetServer, ServerConfig
from edgeml.fleet.store import Store
from edgeml.fleet.store.rollup_models import DeviceVersion, VersionMinute
from edgeml.fleet.store.telemetry_models import DeviceMessage
from edgeml.protocol import topic_for
from edgeml.telemetry.messages import envelope
from tests.support.mosquitto import running_mosquitto
from tests.support.postgres import temporary_database
from tests.support.services import free_port

DEVICES, PER_DEVICE = 20, 100


@contextmanager
def worker(db: str, port: int, name: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-m", "edgeml.fleet.cli", "ingest", "--db", db, "--broker",
                                f"mqtt://127.0.0.1:{port}", "--name", name, "--batch-size", "50"],
                               stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()   # printed once its shared subscription is in place
        assert "subscribed" in line, line
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(30)


def body(seq: int) -> dict:
    return {"window_s": 10.0, "models": [{"model": "m", "version": "1.0.0", "requests": seq, "errors": {},
                                          "latency_ms": {"buckets": [0] * 21, "sum": 0.0}}]}


@pytest.mark.postgres
def test_two_ingest_workers_store_every_message_exactly_once(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    with temporary_database() as db, running_mosquitto(tmp_path / "mqtt") as broker:
        Store.open(db).close()   # migrated once, before the workers race to do it
        with worker(db, broker.port, "a") as a, worker(db, broker.port, "b"):
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="devices")
            publisher.connect("127.0.0.1", broker.port)
            publisher.loop_start()
            a_again = None
            try:
                for seq in range(1, PER_DEVICE + 1):
                    if seq == PER_DEVICE // 2:   # worker a dies without a goodbye and comes back
                        a.kill()
                        a.wait()
                        a_again = worker(db, broker.port, "a")
                        a_again.__enter__()
                    for d in range(DEVICES):
                        device = f"dev-{d}"
                        publisher.publish(topic_for(device, "telemetry"),
                                          envelope(device, seq, time.time(), "telemetry", body(seq)), qos=1)
                # when everything sent has been written (or a minute has passed)
                store = Store.open(db, migrate=False)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    with store.reader() as s:
                        if s.execute(select(func.count()).select_from(DeviceMessage)).scalar() >= DEVICES * PER_DEVICE:
                            break
                    time.sleep(0.2)
                time.sleep(0.5)   # a duplicate would land now, if any
                with store.reader() as s:
                    keys = s.execute(select(DeviceMessage.device_id, DeviceMessage.seq)).all()
                    requests = s.execute(select(func.sum(DeviceVersion.requests))).scalar()
                    writers = set(s.execute(select(VersionMinute.writer).distinct()).scalars())
                store.close()
            finally:
                publisher.loop_stop()
                publisher.disconnect()
                if a_again is not None:
                    a_again.__exit__(None, None, None)
    # then each (device, seq) is there once, counted once, and both workers wrote
    assert sorted(keys) == sorted((f"dev-{d}", s) for d in range(DEVICES) for s in range(1, PER_DEVICE + 1))
    assert requests == DEVICES * sum(range(1, PER_DEVICE + 1))
    assert writers == {"edgeml-ingest-a", "edgeml-ingest-b"}


@pytest.mark.postgres
def test_serve_with_ingest_workers_stores_through_its_child_processes(tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    with temporary_database() as db, running_mosquitto(tmp_path / "mqtt") as broker:
        # given a server that ingests in one child process, not in itself
        server = FleetServer(ServerConfig(data_dir=tmp_path / "data", db=db, broker=f"mqtt://127.0.0.1:{broker.port}",
                                          port=free_port(), ingest_workers=1))
        server.start()
        try:
            assert server.ingest is None and len(server.ingest_workers.processes) == 1
            child = server.ingest_workers.processes[0]
            publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="devices")
            publisher.connect("127.0.0.1", broker.port)
            publisher.loop_start()
            # when a device publishes (again until the child has subscribed: before that, no session holds it)
            deadline = time.monotonic() + 60
            stored = 0
            seq = 0
            while stored == 0 and time.monotonic() < deadline:
                seq += 1
                publisher.publish(topic_for("dev-x", "telemetry"),
                                  envelope("dev-x", seq, time.time(), "telemetry", body(seq)), qos=1)
                time.sleep(0.3)
                with server.store.reader() as s:
                    stored = int(s.execute(select(func.count()).select_from(DeviceMessage)).scalar() or 0)
            publisher.loop_stop()
            publisher.disconnect()
        finally:
            server.stop()
        # then the child stored it, and stopped with the server
        assert stored > 0
        assert child.poll() is not None


def test_ingest_elsewhere_needs_an_external_broker(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="--broker"):
        FleetServer(ServerConfig(data_dir=tmp_path, ingest=False))
