"""The whole edgeml loop on one machine: build, ship in waves, watch, and stop a bad release.

    python examples/fleet_demo.py            # runs the loop, then leaves the dashboard up until Ctrl-C
    python examples/fleet_demo.py --exit     # runs the loop and stops (CI uses this with --observe 3)

Everything is local (SQLite, local artifacts, the embedded MQTT broker, free ports) and uses the real
programs: ``edgeml`` builds the bundles, ``edgeml-fleet serve`` runs the fleet, three ``edgeml-agent``
processes (each its own data directory and port) serve the model and report telemetry. Steps:

1. a signing key; the real PP-OCR text-direction classifier (ONNX, from the rapidocr-onnxruntime wheel,
   fetched once with ``pip download`` into a cache) and calibration crops from scikit-image's sample
   photos;
2. bundle v1 and an improved v2, built with six times the calibration data (its fidelity figures and
   the reference statistics the agents measure drift against rest on more of the real input);
3. the fleet server, three enrolled agents with v1 installed, and steady inference traffic;
4. a rollout of v2 in three waves, which completes;
5. a rollout of a deliberately bad v3 — the same network, but it only works on batches of one, so it
   passes the bundle's smoke test and fails on the batches real traffic sends — which the telemetry gate
   stops in its first wave, sending that device back to v2;
6. the loop closes (``demo_drift_loop.py``): camera-3's inputs shift, its drift rises, v2's capture policy
   sends those samples to the fleet, they are exported and built into v4, and a rollout gated on drift
   takes v4 to that camera's tag.

Everything started here is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script: its sibling modules import
import demo_drift_loop as loop
from demo_inputs import MODEL_NAME, InputError, batch_of_one_only, fetch_model, text_crops

BATCH = 2  # live traffic sends two crops per request


def say(text: str) -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n==> {text}")


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its logs are."""


# -- processes --------------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Demo:
    work: Path
    env: dict[str, str]
    observe_s: float
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 600) -> str:
        """Run one edgeml command to completion; its output is shown only when it fails."""
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise DemoError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start(self, name: str, args: list[str], ready: Callable[[], bool], timeout: float = 90) -> Path:
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # Ctrl-C reaches the demo only; it stops them in order
        self.processes.append((name, proc))
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with {proc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise DemoError(f"{name} did not become ready in {timeout:.0f} s; see {log}")
            time.sleep(0.2)
        return log

    def stop_all(self) -> None:
        for _name, proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self.processes):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class Fleet:
    url: str
    token: str

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        r = httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)
        if r.status_code >= 400:
            raise DemoError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None


@dataclass
class Agent:
    name: str
    url: str
    data_dir: Path
    config: Path
    device_id: str = ""

    def version(self) -> str | None:
        for model in httpx.get(self.url + "/v1/models", timeout=5).json()["models"]:
            if model["name"] == MODEL_NAME:
                return str(model["version"])
        return None


AGENT_CONFIG = """\
data_dir = "{data_dir}"
trusted_keys = ["{data_dir}/trusted"]
[server]
port = {port}
max_body_bytes = 4194304
[telemetry]
interval_s = 1
heartbeat_s = 2
[updates]
poll_interval_s = 1
probation_s = {probation_s}
min_requests = 5
max_error_rate = 0.05
max_latency_regression = 5.0
"""


# -- traffic ------------------------------------------------------------------------------------------

class Traffic:
    """A thread per agent sending batches of real crops, counting answers and failures per version."""

    def __init__(self, agents: list[Agent], crops: np.ndarray, per_second: float = 6.0) -> None:
        self.agents, self.crops, self.period = agents, crops, 1.0 / per_second
        self.shifted: dict[str, np.ndarray] = {}  # an agent's own crops once its camera's view changes
        self.stop_event = threading.Event()
        self.counts: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(a, i), daemon=True) for i, a in enumerate(agents)]

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=10)

    def _loop(self, agent: Agent, offset: int) -> None:
        import io

        with httpx.Client(timeout=10) as client:
            i = offset
            while not self.stop_event.wait(self.period):
                crops = self.shifted.get(agent.name, self.crops)
                batch = crops[[i % len(crops), (i + 1) % len(crops)]]
                i += BATCH
                buf = io.BytesIO()
                np.save(buf, batch)
                try:
                    r = client.post(f"{agent.url}/v1/models/{MODEL_NAME}/infer", content=buf.getvalue(),
                                    headers={"Content-Type": "application/x-npy", "Accept": "application/json"})
                    outcome = "ok" if r.status_code == 200 else f"http {r.status_code}"
                except httpx.TransportError:
                    outcome = "unreachable"
                with self.lock:
                    per = self.counts.setdefault(agent.name, {})
                    per[outcome] = per.get(outcome, 0) + 1

    def totals(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for per in self.counts.values():
                for k, v in per.items():
                    out[k] = out.get(k, 0) + v
            return out


# -- the loop ------------------------------------------------------------------------------------------

def build_bundles(demo: Demo, cache: Path) -> dict[str, Path]:
    step("1. signing key, a real pretrained model, calibration data")
    demo.run("edgeml", "keys", "generate")
    model = fetch_model(cache)
    say(f"    model: {model.name} (PP-OCR text direction classifier, {model.stat().st_size // 1024} KB)")
    policy = loop.write_capture_policy(demo.work / "capture-policy.json")
    calib_v1, calib_v2 = demo.work / "calibration-v1.npy", demo.work / "calibration-v2.npy"
    np.save(calib_v1, text_crops(16, seed=0))
    np.save(calib_v2, text_crops(96, seed=0))
    say("    calibration: crops of scikit-image's sample photos (16 for v1, 96 for v2)")

    step("2. build bundles: v1, an improved v2 (6x the calibration data behind its fidelity and drift\n"
         "    reference, and a capture policy: keep requests whose input drifts), and a bad v3 (it only works on\n"
         "    batches of one)")
    out: dict[str, Path] = {}
    bad = batch_of_one_only(model, demo.work / "cls-batch1.onnx")
    for version, source, calib in (("1.0.0", model, calib_v1), ("2.0.0", model, calib_v2), ("3.0.0", bad, calib_v1)):
        path = demo.work / f"{MODEL_NAME}-{version}.edgepkg"
        t0 = time.monotonic()
        capture = ["--capture-policy", str(policy)] if version == "2.0.0" else []
        report = json.loads(demo.run("edgeml", "build", str(source), "-t", "x86-cpu", "-p", "fp32", "--runtime",
                                     "onnxruntime", "-c", str(calib), "--name", MODEL_NAME, "--version", version,
                                     *capture, "--bench-seconds", "0.3", "--json", "-o", str(path)))
        say(f"    v{version}: {path.name} ({report['chosen']}, built in {time.monotonic() - t0:.0f} s)")
        out[version] = path
    return out


def start_fleet(demo: Demo) -> Fleet:
    step("3. fleet server (SQLite, local artifacts, embedded MQTT broker, free ports)")
    data = demo.work / "fleet"
    token = demo.run("edgeml-fleet", "admin", "init", "--data-dir", str(data)).strip().splitlines()[-1]
    port, broker_port = free_port(), free_port()
    demo.start("fleet", ["edgeml-fleet", "serve", "--data-dir", str(data), "--port", str(port),
                         "--broker-port", str(broker_port), "--online-window", "10"],
               lambda: answers(f"http://127.0.0.1:{port}/healthz"))
    fleet = Fleet(f"http://127.0.0.1:{port}", token)
    key = (Path(demo.env["EDGEML_HOME"]) / "keys" / "default.pub").read_text()
    fleet.call("POST", "/v1/keys", json={"name": "demo-builder", "public_pem": key})
    demo.env.update(EDGEML_FLEET_URL=fleet.url, EDGEML_FLEET_TOKEN=token)  # for the edgeml-fleet CLI steps
    say(f"    {fleet.url} (broker on 127.0.0.1:{broker_port}); it trusts the demo's signing key")
    return fleet


def start_agents(demo: Demo, fleet: Fleet, v1: Path, count: int, probation_s: float) -> list[Agent]:
    step(f"4. {count} agents: enrol, install v1, run")
    agents = []
    for i in range(1, count + 1):
        name = f"camera-{i}"
        data_dir = demo.work / name
        port = free_port()
        tags = ["ocr", loop.SHIFTED_TAG] if name == loop.SHIFTED_CAMERA else ["ocr"]  # the loading-dock camera
        enroll_token = fleet.call("POST", "/v1/enrollment-tokens", json={"group": "demo", "tags": tags})["token"]
        demo.run("edgeml-agent", "enroll", "--server", fleet.url, "--token", enroll_token, "--data-dir", str(data_dir),
                 "--name", name)
        config = demo.work / f"{name}.toml"
        config.write_text(AGENT_CONFIG.format(data_dir=data_dir, port=port, probation_s=probation_s))
        demo.run("edgeml-agent", "install", str(v1), "--config", str(config))
        agent = Agent(name, f"http://127.0.0.1:{port}", data_dir, config)
        agent.device_id = json.loads((data_dir / "credentials.json").read_text())["device_id"]
        demo.start(name, ["edgeml-agent", "run", "--config", str(config)], partial(answers, agent.url + "/healthz"))
        say(f"    {name}: device {agent.device_id}, {agent.url}, serving {MODEL_NAME}@{agent.version()}")
        agents.append(agent)
    return agents


def push(fleet: Fleet, bundle: Path) -> None:
    fleet.call("POST", "/v1/bundles", content=bundle.read_bytes(), headers={"Content-Type": "application/octet-stream"})


def watch_rollout(fleet: Fleet, rollout_id: str, timeout: float) -> dict[str, Any]:
    """Print each change of the rollout's state / wave / device counts until it ends."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        status = fleet.call("GET", f"/v1/rollouts/{rollout_id}")
        line = (f"    [{status['state']}] wave {min(status['wave'], status['waves'])}/{status['waves']} "
                f"devices: {', '.join(f'{k} {v}' for k, v in sorted(status['counts'].items())) or '-'}")
        if status.get("live"):
            live = status["live"]
            # a window with no traffic has no latency: "-", never "0.0 ms"
            p50 = "-" if live.get("p50_ms") is None else f"{live['p50_ms']:.1f} ms"
            line += f" | live: error rate {live['error_rate']:.3f}, p50 {p50}, drift {loop.fmt(live.get('drift'))}"
        if line != last:
            say(line)
            last = line
        if status["state"] in ("completed", "aborted", "paused"):
            return dict(status)
        if time.monotonic() > deadline:
            raise DemoError(f"rollout {rollout_id} still {status['state']} after {timeout:.0f} s: {status}")
        time.sleep(0.5)


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def rollout(fleet: Fleet, version: str, observe_s: float, probation_s: float) -> str:
    body = {"bundle": f"{MODEL_NAME}@{version}", "group": "demo", "waves": [1, 50, 100],
            "max_error_rate": 0.05,
            # Three agents, a fleet and the traffic share one laptop's CPU, so latency is noisy here: the
            # demo's latency gate is generous (p50 may grow 5x) and the error-rate gate is what stops v3.
            "max_latency_regression": 5.0, "min_requests": 5, "observe_s": observe_s, "wave_timeout_s": 120,
            "on_failure": "abort", "probation_s": probation_s}
    return str(fleet.call("POST", "/v1/rollouts", json=body)["id"])


def run_loop(demo: Demo, args: argparse.Namespace) -> dict[str, Any]:
    bundles = build_bundles(demo, args.cache)
    fleet = start_fleet(demo)
    # pushed before any agent reports: the fleet scores drift only against bundles it holds (and remembers
    # a missing one for a minute), so v1's drift is measured from its first telemetry window
    for path in bundles.values():
        push(fleet, path)
    say(f"    pushed {', '.join(p.name for p in bundles.values())} to the fleet's registry")
    agents = start_agents(demo, fleet, bundles["1.0.0"], args.agents, args.probation)
    summary: dict[str, Any] = {"fleet": fleet.url, "dashboard": f"{fleet.url}/dashboard/", "workdir": str(demo.work),
                               "devices": {a.name: a.device_id for a in agents}}
    with Traffic(agents, text_crops(64, seed=1)) as traffic:
        step("5. real inference traffic (batches of two crops) to every agent; telemetry flows to the fleet")
        wait_for("telemetry from every agent", lambda: all(
            fleet.call("GET", f"/v1/telemetry/{a.device_id}?minutes=5")["windows"] for a in agents), 60)
        say(f"    requests so far: {traffic.totals()}")

        step("6. roll out v2 in waves (1 %, 50 %, 100 % of group 'demo')")
        good = rollout(fleet, "2.0.0", args.observe, args.probation)
        summary["v2"] = watch_rollout(fleet, good, args.timeout)
        wait_for("every agent serving v2", lambda: all(a.version() == "2.0.0" for a in agents), 60)
        say(f"    agents now serve: {', '.join(f'{a.name} {a.version()}' for a in agents)}")

        step("7. roll out the bad v3: the gate must stop it in its first wave")
        bad = rollout(fleet, "3.0.0", args.observe, args.probation)
        summary["v3"] = watch_rollout(fleet, bad, args.timeout)
        wait_for("every agent back on v2", lambda: all(a.version() == "2.0.0" for a in agents), 90)
        summary["loop"] = close_the_loop(demo, fleet, agents, traffic, args)
        summary["versions"] = {a.name: a.version() for a in agents}
        summary["traffic"] = traffic.totals()
    summary["health"] = fleet.call("GET", "/v1/health?minutes=30")
    # what the dashboard's drift chart plots: each device's score per version from its telemetry
    summary["dashboard_drift"] = {a.name: {d["version"]: d["score"] for d in fleet.call(
        "GET", f"/v1/telemetry/{a.device_id}?minutes=30")["drift"]} for a in agents}
    summary["telemetry_windows"] = {a.name: len(fleet.call("GET", f"/v1/telemetry/{a.device_id}?minutes=30")["windows"])
                                    for a in agents}
    summary["admin_token"] = fleet.token
    return summary


def close_the_loop(demo: Demo, fleet: Fleet, agents: list[Agent], traffic: Traffic,
                   args: argparse.Namespace) -> dict[str, Any]:
    """Steps 8-11 (``demo_drift_loop``): drift on one camera -> captures -> v4 -> a drift-gated rollout."""
    camera = next(a for a in agents if a.name == loop.SHIFTED_CAMERA)
    out: dict[str, Any] = {"device": camera.device_id}
    out["drift"] = loop.shift_and_watch(demo, fleet, camera.device_id, lambda: traffic.shifted.update(
        {camera.name: loop.night_crops(traffic.crops)}))
    out["captures"] = loop.collect_captures(demo, fleet, camera.device_id)
    v4, out["v4_fidelity"] = loop.build_v4(demo, fetch_model(args.cache), Path(out["captures"]["dataset"]),
                                           demo.work / "capture-policy.json")
    push(fleet, v4)
    created = loop.gated_rollout(demo, fleet, camera.device_id, args.observe, args.probation)
    status = watch_rollout(fleet, created["id"], args.timeout)
    out["v4"] = status
    out["v4_gates"] = loop.gate_figures(status)
    loop.print_gate_figures(out["v4_gates"])
    if status["state"] == "completed":
        wait_for(f"{camera.name} serving v4", lambda: camera.version() == "4.0.0", 60)
    out["drift"]["v4"] = loop.poll(f"{camera.name}'s drift on v4", lambda: loop.input_drift(
        fleet, camera.device_id, "4.0.0") is not None, 30) and loop.input_drift(fleet, camera.device_id, "4.0.0")
    loop.say(f"    {camera.name} input drift on v4: {out['drift']['v4']:.3f} "
             f"(on v2 it was {out['drift']['after']:.3f})")
    return out


def print_summary(s: dict[str, Any]) -> None:
    v2, v3 = s["v2"], s["v3"]
    step("Summary")
    say(f"    v2 rollout {v2['id']}: {v2['state']} - {v2['devices']} devices, {v2['waves']} waves")
    say(f"    v3 rollout {v3['id']}: {v3['state']} - {v3.get('reason') or 'no reason recorded'}")
    lp = s["loop"]
    say(f"    the loop on {loop.SHIFTED_CAMERA}: input drift {loop.fmt(lp['drift']['before'])} -> "
        f"{lp['drift']['after']:.3f} on v2; {lp['captures']['by_trigger']} captures; v4 rollout "
        f"{lp['v4']['state']}; drift on v4 {lp['drift']['v4']:.3f}")
    say(f"    agents serve: {', '.join(f'{n} {v}' for n, v in s['versions'].items())}")
    for h in s["health"]:
        p50 = f"{h['p50_ms']:.1f} ms" if h["p50_ms"] is not None else "-"
        say(f"    {h['model']}@{h['version']}: {h['requests']} requests, error rate {h['error_rate']:.3f}, p50 {p50}")
    say(f"    client side: {s['traffic']}")
    say(f"    dashboard: {s['dashboard']}  (token: {s['admin_token']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The edgeml loop on one machine.")
    parser.add_argument("--exit", action="store_true", help="stop after the summary instead of waiting for Ctrl-C")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a new temporary directory)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGEML_DEMO_CACHE") or
                                                           Path.home() / ".cache" / "edgeml-demo"),
                        help="where the model wheel is cached between runs")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--observe", type=float, default=15.0, help="seconds the fleet observes each wave")
    parser.add_argument("--probation", type=float, default=6.0,
                        help="seconds each agent keeps a new version on probation")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a rollout after this many seconds")
    parser.add_argument("--summary-json", type=Path, help="also write the summary here (for tests)")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgeml-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)  # the edgeml programs of this interpreter's environment
    env = {**os.environ, "EDGEML_HOME": str(work / "home"), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "PYTHONUNBUFFERED": "1"}
    if shutil.which("edgeml-fleet", path=env["PATH"]) is None:
        say("error: edgeml-fleet is not installed in this environment: run scripts/setup.sh first")
        return 2
    demo = Demo(work, env, args.observe)
    say(f"edgeml demo: working in {work}")
    with ExitStack() as stack:
        stack.callback(demo.stop_all)
        stack.enter_context(_signals_as_interrupt())
        try:
            summary = run_loop(demo, args)
        except (DemoError, InputError, loop.LoopError) as exc:
            say(f"\nerror: {exc}\n(logs: {work / 'logs'})")
            return 1
        except KeyboardInterrupt:
            say("\ninterrupted: stopping everything")
            return 130
        print_summary(summary)
        if args.summary_json:
            args.summary_json.write_text(json.dumps(summary, indent=2, default=str))
        if not args.exit:
            say("\nThe fleet and the agents keep running; press Ctrl-C to stop them all.")
            try:
                while all(p.poll() is None for _, p in demo.processes):
                    time.sleep(1)
                say("a process stopped on its own; stopping the rest")
            except KeyboardInterrupt:
                say("\nstopping everything")
    return 0


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """Ctrl-C and SIGTERM (e.g. from a CI runner) both stop everything the demo started. SIGINT is set
    explicitly because a shell starts background jobs with it ignored, and Python keeps that."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


if __name__ == "__main__":
    sys.exit(main())
