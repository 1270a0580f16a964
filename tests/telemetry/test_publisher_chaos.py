"""Store-and-forward against a real Mosquitto with TLS, passwords and ACLs: broker outages and a
SIGKILLed device lose nothing, and every sequence number arrives (duplicates are the fleet's to drop)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.support.emitter_process import running_emitter
from tests.support.restartable_mosquitto import RestartableMosquitto
from tests.support.tls import PKI, make_pki


def Broker(directory: Path, pki: PKI, users: dict[str, str]) -> RestartableMosquitto:
    """A restartable Mosquitto whose password file holds ``users`` and whose ACL is the fleet's rule set."""
    passwords = directory / "passwords"
    passwords.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
    (directory / "acl").write_text(
        "user fleet\ntopic read edgeml/#\n\npattern write edgeml/v1/%u/#\npattern read edgeml/v1/%u/desired\n"
    )
    return RestartableMosquitto(directory / "broker", password_file=passwords, acl_file=directory / "acl", pki=pki)


class Collector:
    """A persistent-session QoS 1 subscriber standing in for the fleet's store."""

    def __init__(self, broker: RestartableMosquitto, pki: PKI) -> None:
        self.seqs: list[int] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-store", clean_session=False)
        self.client.username_pw_set("fleet", "fleet-secret")
        self.client.tls_set(ca_certs=str(pki.ca_file))
        self.client.on_connect = lambda c, *a: c.subscribe("edgeml/v1/+/events", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.seqs.append(json.loads(msg.payload)["seq"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow
def test_outage_and_sigkill_lose_no_sequence_number(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = Broker(tmp_path, pki, {"fleet": "fleet-secret", "dev-a": "dev-a-secret"})
    broker.start()
    store = Collector(broker, pki)
    total = 600
    cfg = tmp_path / "emitter.json"
    cfg.write_text(json.dumps({
        "spool": str(tmp_path / "spool.db"), "device": "dev-a", "broker": f"mqtts://127.0.0.1:{broker.port}",
        "username": "dev-a", "password": "dev-a-secret", "ca_file": str(pki.ca_file), "total": total, "rate": 150,
    }))
    try:
        with running_emitter(cfg) as first:
            time.sleep(1.0)                        # some messages flow normally
            broker.stop()                          # outage: the device keeps emitting into its spool
            time.sleep(1.0)
            first.send_signal(signal.SIGKILL)      # ...and dies in the middle of the outage
            first.wait(10)
        with running_emitter(cfg) as second:              # restarted device resumes from its spool
            time.sleep(1.5)
            broker.start()                         # broker back after several seconds
            out, _ = second.communicate(timeout=120)
            assert second.returncode == 0, out.decode()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(set(store.seqs)) < total:
            time.sleep(0.1)
    finally:
        store.close()
        broker.stop()
    received = set(store.seqs)
    assert received == set(range(1, total + 1)), f"missing: {sorted(set(range(1, total + 1)) - received)[:20]}"


def test_device_credentials_only_reach_their_own_topics(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = Broker(tmp_path, pki, {"fleet": "fleet-secret", "dev-a": "a-secret", "dev-b": "b-secret"})
    broker.start()
    store = Collector(broker, pki)
    try:
        cfg = tmp_path / "emitter.json"
        # dev-a authenticates but claims to be dev-b: the ACL drops everything it publishes
        cfg.write_text(json.dumps({
            "spool": str(tmp_path / "spool.db"), "device": "dev-b", "broker": f"mqtts://127.0.0.1:{broker.port}",
            "username": "dev-a", "password": "a-secret", "ca_file": str(pki.ca_file), "total": 5, "rate": 50,
        }))
        with running_emitter(cfg) as proc:
            proc.communicate(timeout=60)
        time.sleep(0.5)
        assert store.seqs == []
    finally:
        store.close()
        broker.stop()
