"""Telemetry benchmark, measured in one run here:

1. messages per second the fleet's ingest writes into the store vs the rate the same broker passes to a
   bare paho subscriber (goal: ratio >= 0.8);
2. the cost of telemetry to inference throughput on the agent: requests/s with the telemetry component
   publishing vs without (goal: <= 1 %).

    python scripts/bench_telemetry.py [--messages 20000] [--db postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

import paho.mqtt.client as mqtt  # noqa: E402

from tests.support.services import free_port, port_open  # noqa: E402


def start_mosquitto(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join([
        "persistence false", "max_queued_messages 1000000", "max_inflight_messages 1000",
        *(["user root"] if os.geteuid() == 0 else []), "allow_anonymous true", f"listener {port} 127.0.0.1", "",
    ]))
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not port_open("127.0.0.1", port):
        time.sleep(0.05)
    return proc, port


def envelope(device: str, seq: int) -> bytes:
    body = {"uptime_s": 1234.5, "note": "x" * 40}
    return json.dumps({"schema": 1, "device": device, "seq": seq, "ts": round(time.time(), 3), "kind": "heartbeat",
                       "body": body}, separators=(",", ":")).encode()


def publish(port: int, device: str, n: int) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{device}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(f"edgeml/v1/{device}/telemetry", envelope(device, i + 1), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()


def bare_subscriber_rate(port: int, n: int) -> float:
    got: list[float] = []
    done = threading.Event()

    def on_message(c, u, m) -> None:  # type: ignore[no-untyped-def]
        got.append(time.perf_counter())
        if len(got) == n:
            done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("edgeml/v1/+/telemetry", qos=1)
    sub.loop_start()
    time.sleep(0.5)
    publish(port, "bare-dev", n)
    done.wait(120)
    sub.loop_stop()
    sub.disconnect()
    return (len(got) - 1) / (got[-1] - got[0])


def ingest_rate(port: int, n: int, db: str) -> float:
    from edgeml.fleet.ingest import IngestService
    from edgeml.fleet.store import Store
    from edgeml.fleet.store.telemetry_models import DeviceMessage

    store = Store.open(db)
    ingest = IngestService(store, "127.0.0.1", port, "bench", "bench", shared=False, client_id="bench-ingest")
    ingest.start()
    assert ingest.connected.wait(10)
    first: list[float] = []
    start = time.perf_counter()
    threading.Thread(target=publish, args=(port, "ingest-dev", n), daemon=True).start()
    while ingest.stats.stored < n and time.perf_counter() - start < 300:
        if ingest.stats.received and not first:
            first.append(time.perf_counter())
        time.sleep(0.005)
    elapsed = time.perf_counter() - (first[0] if first else start)
    stored = ingest.stats.stored
    ingest.stop()
    with store.session() as s:
        rows = s.query(DeviceMessage).filter(DeviceMessage.device_id == "ingest-dev").count()
    store.close()
    assert rows == n, f"stored {rows} of {n}"
    return stored / elapsed


def agent_throughput(tmp: Path, broker_port: int | None, seconds: float) -> float:
    import httpx
    import numpy as np

    from edgeml.bundle import SigningKey
    from edgeml_agent.components import build_components
    from edgeml_agent.config import parse_config
    from edgeml_agent.daemon import Agent
    from tests.support.bundles import make_bundle
    from tests.support.tiny_models import tiny_cnn

    key = SigningKey.generate()
    data = Path(tempfile.mkdtemp(dir=tmp))
    (data / "trusted").mkdir()
    (data / "trusted" / "k.pub").write_bytes(key.public_pem())
    bundle = make_bundle(data, key, tiny_cnn(data / "cnn.onnx", batch="N", size=32))
    telemetry = ({"broker": f"mqtt://127.0.0.1:{broker_port}", "device_id": "bench-agent", "interval_s": 1.0}
                 if broker_port else {"enabled": False})
    config = parse_config({"data_dir": str(data), "server": {"port": 0}, "telemetry": telemetry,
                           "updates": {"enabled": False}, "runtime": {"num_threads": 1}})
    agent = Agent(config, components=build_components(config))
    agent.store.install(bundle)
    agent.start()
    assert agent.server is not None
    url = f"http://127.0.0.1:{agent.server.port}/v1/models/m/infer"
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    import io

    buf = io.BytesIO()
    np.save(buf, x)
    body = buf.getvalue()
    counts = [0, 0]
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        with httpx.Client() as c:
            while time.perf_counter() < stop:
                r = c.post(url, content=body, headers={"content-type": "application/x-npy"})
                assert r.status_code == 200
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    agent.stop()
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--db", default=None, help="default: a SQLite file")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        broker, port = start_mosquitto(tmp)
        try:
            bare = bare_subscriber_rate(port, args.messages)
            ingest = ingest_rate(port, args.messages, args.db or f"sqlite:///{tmp / 'fleet.db'}")
            with_t, without_t = [], []
            for _ in range(args.rounds):  # interleaved, so drift of the machine hits both alike
                without_t.append(agent_throughput(tmp, None, args.seconds))
                with_t.append(agent_throughput(tmp, port, args.seconds))
        finally:
            broker.terminate()
            broker.wait()
    off, on = statistics.median(without_t), statistics.median(with_t)
    db_name = "PostgreSQL" if args.db else "SQLite"
    print(f"\n| measurement | value | goal |\n|---|---|---|")
    print(f"| bare paho subscriber (Mosquitto, QoS 1, {args.messages} msgs) | {bare:,.0f} msg/s | |")
    print(f"| fleet ingest into {db_name} (same broker) | {ingest:,.0f} msg/s | |")
    print(f"| ingest / bare ratio | {ingest / bare:.2f} | >= 0.8 |")
    print(f"| agent HTTP throughput, telemetry off (median of {args.rounds}) | {off:,.1f} req/s | |")
    print(f"| agent HTTP throughput, telemetry on, 1 s interval | {on:,.1f} req/s | |")
    print(f"| telemetry cost | {(off - on) / off * 100:+.2f} % | <= 1 % |")
    print(f"\nruns off: {[round(v, 1) for v in without_t]}  on: {[round(v, 1) for v in with_t]}")


if __name__ == "__main__":
    main()
