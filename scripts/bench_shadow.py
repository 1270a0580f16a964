"""What the probation shadow costs live requests, on a real agent at full load.

A real ``edgeml-fleet serve`` (embedded broker) and one enrolled ``edgeml-agent`` daemon serve a
CPU-bound model (wide MatMuls). Closed-loop HTTP clients keep the agent saturated while the fleet rolls
out new versions of that model (the same answers: the shadow agrees) with a long probation, in turns:
one WITHOUT a shadow gate, one WITH ``min_shadow_agreement`` (the agent then runs the previous version on
a sample of live requests: ``shadow_fraction``, default 20 %). Only the requests the NEW version answered
during its probation count. Printed: p50/p99 latency and throughput of the live requests, per mode, and
the difference.

The shadow runs in its own thread behind a bounded queue, so a live answer never waits on it; what it
can cost is CPU: on a saturated device, the previous model's runs on the sample take cores the live
requests would have used.

    PYTHONPATH=$PWD:$PWD/agent python scripts/bench_shadow.py           # 2 turns of 15 s per mode
    PYTHONPATH=$PWD:$PWD/agent python scripts/bench_shadow.py --quick   # 1 turn of 6 s per mode
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_load import RawHttpClient

from edgeml.bundle import SigningKey
from tests.fleet.rollouts.real_fleet import RealFleet, real_fleet, wait_for
from tests.support.bundles import make_bundle
from tests.updates.helpers import slow_model

# The default statistics budget (as in the field), a short poll so each turn starts quickly.
AGENT = """
[telemetry]
interval_s = 2
heartbeat_s = 2
[updates]
poll_interval_s = 1
probation_s = 1
min_requests = 5
"""
BODY = json.dumps({"inputs": np.random.default_rng(0).random((64, 4)).round(4).tolist()}).encode()


class Saturating:
    """``clients`` closed-loop connections; each answer's arrival time, latency and version."""

    def __init__(self, port: int, clients: int) -> None:
        self.conns = [RawHttpClient(port, "POST", "/v1/models/bench/infer", BODY,
                                    {"Content-Type": "application/json"}) for _ in range(clients)]
        self.answers: list[tuple[float, float, str]] = []   # (end time, seconds, version)
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.conns]

    def _run(self, conn: RawHttpClient) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            status, _, data = conn.call()
            t1 = time.perf_counter()
            if status == 200:
                self.answers.append((t1, t1 - t0, str(json.loads(data)["version"])))
            else:
                self.failures += 1

    def __enter__(self) -> Saturating:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        for c in self.conns:
            c.close()


def one_turn(fleet: RealFleet, load: Saturating, version: str, shadow: bool, probation_s: float) -> list[float]:
    """Roll ``version`` out with a ``probation_s`` probation; the latencies of its answers during it."""
    gates = {"min_shadow_agreement": 0.5} if shadow else {}
    ro = fleet.rollout(f"bench@{version}", waves=[100], probation_s=probation_s, observe_s=0, **gates)
    switched = wait_for(f"the agent to answer from {version}",
                        lambda: next((t for t, _, v in list(load.answers) if v == version), None), 120, fleet.logs)
    time.sleep(probation_s)
    done = fleet.wait_stopped(ro, timeout=120)
    if done["state"] != "completed":
        raise SystemExit(f"the rollout of {version} did not complete: {done['reason']}")
    if shadow:   # what the agent's shadow did, in its own words
        said = wait_for("the shadow's summary in the agent's log", lambda: [
            line for line in fleet.devices[0].agent.log_path.read_text().splitlines()
            if f"shadow of bench@{version}:" in line], 30, fleet.logs)
        print("   ", said[-1].split("edgeml_agent.updates: ")[-1], flush=True)
    # 0.5 s margins: the switch itself, and the end of probation (the shadow stops then)
    return [s for t, s, v in list(load.answers) if v == version and switched + 0.5 <= t <= switched + probation_s - 0.5]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 turn of 6 s per mode")
    ap.add_argument("--turns", type=int, default=2, help="turns per mode (alternating)")
    ap.add_argument("--probation", type=float, default=15.0, help="seconds of probation (measured) per turn")
    ap.add_argument("--clients", type=int, default=max(2, os.cpu_count() or 2) * 2)
    args = ap.parse_args()
    turns, probation_s = (1, 6.0) if args.quick else (args.turns, args.probation)
    versions = [f"{i + 2}.0.0" for i in range(2 * turns)]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        key = SigningKey.generate()
        model = slow_model(tmp / "slow.onnx", layers=12, width=256)
        (tmp / "bundles").mkdir()
        bundles = {f"bench@{v}": make_bundle(tmp / "bundles", key, model, name="bench", version=v)
                   for v in ["1.0.0", *versions]}
        with real_fleet(tmp, key, bundles, agents=1, installed=[bundles["bench@1.0.0"]], extra=AGENT) as fleet:
            (device,) = fleet.devices
            with Saturating(device.agent.port, args.clients) as load:
                results: dict[bool, list[list[float]]] = {False: [], True: []}
                for i, version in enumerate(versions):
                    shadow = i % 2 == 1
                    results[shadow].append(one_turn(fleet, load, version, shadow, probation_s))
                    print(f"  turn {i + 1}/{len(versions)}: {version} {'with' if shadow else 'without'} shadow, "
                          f"{len(results[shadow][-1])} requests", flush=True)
            if load.failures:
                raise SystemExit(f"{load.failures} live requests failed")
    report(results, probation_s - 1.0, args.clients)


def report(results: dict[bool, list[list[float]]], window_s: float, clients: int) -> None:
    rows = {}
    for shadow, turns in results.items():
        lat = np.array([s for turn in turns for s in turn]) * 1000
        rows[shadow] = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                        sum(len(t) for t in turns) / (window_s * len(turns)))
    print(f"\nlive requests during probation, {clients} closed-loop clients, CPU-bound model, "
          f"shadow fraction 20 % (the default)\n")
    print("| probation | p50 ms | p99 ms | requests/s |")
    print("|---|---|---|---|")
    for shadow, (p50, p99, rps) in rows.items():
        print(f"| {'with shadow' if shadow else 'no shadow'} | {p50:.2f} | {p99:.2f} | {rps:.1f} |")
    (p50a, p99a, rpsa), (p50b, p99b, rpsb) = rows[False], rows[True]
    print(f"| shadow's cost | {(p50b / p50a - 1) * 100:+.1f} % | {(p99b / p99a - 1) * 100:+.1f} % | "
          f"{(rpsb / rpsa - 1) * 100:+.1f} % |")


if __name__ == "__main__":
    main()
