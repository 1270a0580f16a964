"""The simulation, phase by phase, against a running fleet (see :mod:`fleetsim.setups`):

1. enrolment: N one-time tokens and N concurrent ``POST /v1/enroll`` (failures; tokens spent without a
   device; devices the broker then refuses to log in = orphans);
2. connect: every device with its own credentials, from ``workers`` processes;
3. steady: telemetry every ``telemetry_s`` and heartbeats for ``duration_s`` while API probes run; the
   server's CPU per stored message is taken over this phase;
4. rollout to every device: time until each one's desired state arrived, then the agent's update events;
5. drain: stop sending, wait for the broker's acknowledgements and for ingest to store them all;
6. check: every (device, seq) sent stored exactly once, read from the database.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetsim import api, check
from fleetsim.devices import DeviceSettings
from fleetsim.setups import Fleet
from fleetsim.worker import WorkerPlan, run_worker


@dataclass(frozen=True)
class SimConfig:
    devices: int = 100
    duration_s: float = 30.0
    telemetry_s: float = 10.0
    heartbeat_s: float = 30.0
    workers: int = 2
    in_process: bool = False          # workers as threads of this process (the test) instead of processes
    rollout: bool = True
    enrol_concurrency: int = 32
    connect_timeout_s: float = 120.0
    rollout_timeout_s: float = 120.0
    drain_timeout_s: float = 300.0
    group: str = "bench"


@dataclass
class CpuWindow:
    """CPU seconds the server (with its child processes) and the broker used while ``stored`` messages
    were stored."""

    server_s: float = 0.0
    broker_s: float = 0.0
    stored: int = 0
    server_rss_mb: float = 0.0   # resident memory at the end of the window
    broker_rss_mb: float = 0.0

    def per_message_us(self, seconds: float) -> float:
        return seconds / self.stored * 1e6 if self.stored else float("nan")


@dataclass
class SimResult:
    config: SimConfig
    setup: str
    enrolment: api.Enrolment = field(default_factory=api.Enrolment)
    tokens_without_device: int = 0
    no_broker_login: int = 0
    connected: int = 0
    connect_s: float = 0.0
    sent: dict[str, int] = field(default_factory=dict)
    unacked: int = 0
    once: check.OnceReport = field(default_factory=check.OnceReport)
    lags_s: list[float] = field(default_factory=list)
    probes: dict[str, list[float]] = field(default_factory=dict)
    probe_failures: dict[str, int] = field(default_factory=dict)
    rollout_targets: int = 0
    desired_delivered: int = 0
    fanout_s: float | None = None
    rollout_final: str = "-"
    quiet: CpuWindow = field(default_factory=lambda: CpuWindow())    # steady, no API calls
    probed: CpuWindow = field(default_factory=lambda: CpuWindow())   # steady, API probes running
    reconnects: int = 0
    drain: str = "-"       # complete | stalled | backlog (see _wait_for_ingest)
    drain_s: float = 0.0


class Workers:
    """The worker processes (or threads) and what they report."""

    def __init__(self, cfg: SimConfig, plans: list[WorkerPlan]) -> None:
        self.plans = plans
        ctx = multiprocessing.get_context("spawn")
        self.reports: Any = queue.Queue() if cfg.in_process else ctx.Queue()
        self.stop_flag: Any = threading.Event() if cfg.in_process else ctx.Event()
        kind: Any = threading.Thread if cfg.in_process else ctx.Process
        self.runners = [kind(target=run_worker, args=(p, self.reports, self.stop_flag), daemon=True) for p in plans]
        self.progress: dict[int, dict[str, Any]] = {}
        self.finals: dict[int, dict[str, Any]] = {}

    def start(self) -> None:
        for r in self.runners:
            r.start()

    def poll(self, timeout: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, index, doc = self.reports.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                return
            (self.finals if kind == "final" else self.progress)[index] = doc

    def total(self, key: str) -> int:
        return sum(int(p.get(key, 0)) for p in self.progress.values())

    def desired(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.progress.values():
            out.update(p.get("desired", {}))
        return out

    def finish(self, timeout: float) -> None:
        self.stop_flag.set()
        deadline = time.monotonic() + timeout
        while len(self.finals) < len(self.plans) and time.monotonic() < deadline:
            self.poll(1.0)
        for r in self.runners:
            r.join(10)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and all their children (an ingest worker process included)."""
    return sum(t.user + t.system for t in _each(pids, lambda p: p.cpu_times()))


def rss_mb(pids: list[int]) -> float:
    return sum(m.rss for m in _each(pids, lambda p: p.memory_info())) / 2**20


def _each(pids: list[int], read: Any) -> list[Any]:
    import psutil

    out = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out += [read(p) for p in [root, *root.children(recursive=True)]]
        except psutil.Error:
            continue
    return out


def simulate(fleet: Fleet, cfg: SimConfig, work: Path) -> SimResult:
    result = SimResult(cfg, fleet.setup)
    eng = check.engine(fleet.db_url)
    with api.admin_client(fleet.url, fleet.admin_token) as http:
        _upload_bundles(http, work)
        result.enrolment = api.enroll_devices(fleet.url, fleet.admin_token, cfg.group, cfg.devices,
                                              cfg.enrol_concurrency)
        result.tokens_without_device = check.used_tokens_without_device(eng, cfg.group)
        workers = _start_workers(cfg, result)
        try:
            _connect_phase(workers, cfg, result)
            # First half without API calls: the server's CPU per message is then ingest's (and the idle
            # server's); second half with the probes running, as an operator's dashboard would.
            result.quiet = _steady_phase(workers, cfg.duration_s / 2, fleet, eng, cfg.group)
            probes = api.Probes(api.admin_client(fleet.url, fleet.admin_token, timeout=120))
            probes.start()
            result.probed = _steady_phase(workers, cfg.duration_s / 2, fleet, eng, cfg.group)
            if cfg.rollout:
                _rollout_phase(http, workers, cfg, probes, result)
            probes.stop()
            result.probes, result.probe_failures = probes.latencies, probes.failures
        finally:
            workers.finish(cfg.drain_timeout_s)
        _collect(workers, result)
        _wait_for_ingest(eng, cfg, result)
        result.once = check.exactly_once(result.sent, check.stored_counts(eng, cfg.group))
        result.lags_s = check.ingest_lags_s(eng, cfg.group)
    eng.dispose()
    return result


def _upload_bundles(http: Any, work: Path) -> None:
    from edgeml.bundle import SigningKey
    from tests.support.bundles import make_bundle
    from tests.support.tiny_models import tiny_mlp

    key = SigningKey.generate()
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_mlp(work / "m.onnx")
    bundles = [make_bundle(work / f"m-{v}.edgepkg", key, model, version=v).read_bytes() for v in ("1.0.0", "2.0.0")]
    api.upload_bundles(http, key.public_pem(), bundles)


def _start_workers(cfg: SimConfig, result: SimResult) -> Workers:
    settings = DeviceSettings(telemetry_s=cfg.telemetry_s, heartbeat_s=cfg.heartbeat_s)
    devices = result.enrolment.devices
    n = max(1, min(cfg.workers, len(devices) or 1))
    plans = [WorkerPlan(i, devices[i::n], settings) for i in range(n)]
    workers = Workers(cfg, plans)
    workers.start()
    return workers


def _connect_phase(workers: Workers, cfg: SimConfig, result: SimResult) -> None:
    started = time.monotonic()
    expected = len(result.enrolment.devices)
    while time.monotonic() - started < cfg.connect_timeout_s:
        workers.poll()
        if workers.total("ever_connected") + workers.total("refused") >= expected and workers.progress:
            break
    result.connect_s = time.monotonic() - started
    result.connected = workers.total("ever_connected")


def _steady_phase(workers: Workers, seconds: float, fleet: Fleet, eng: Any, group: str) -> CpuWindow:
    cpu0, broker0 = cpu_seconds(fleet.server_pids), cpu_seconds(fleet.broker_pids)
    stored0 = check.stored_total(eng, group)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        workers.poll()
    return CpuWindow(cpu_seconds(fleet.server_pids) - cpu0, cpu_seconds(fleet.broker_pids) - broker0,
                     check.stored_total(eng, group) - stored0, rss_mb(fleet.server_pids), rss_mb(fleet.broker_pids))


def _rollout_phase(http: Any, workers: Workers, cfg: SimConfig, probes: api.Probes, result: SimResult) -> None:
    result.rollout_targets = workers.total("ever_connected")
    created = time.time()
    try:
        rollout_id = api.create_rollout(http, "m@2.0.0", cfg.group)
    except Exception as exc:
        result.rollout_final = f"create failed: {exc}"[:80]
        return
    probes.endpoints["GET /v1/rollouts/{id}"] = lambda h: h.get(f"/v1/rollouts/{rollout_id}").raise_for_status()
    deadline = time.monotonic() + cfg.rollout_timeout_s
    while time.monotonic() < deadline:
        workers.poll()
        if len(workers.desired()) >= result.rollout_targets:
            break
    arrivals = workers.desired()
    result.desired_delivered = len(arrivals)
    result.fanout_s = max(arrivals.values()) - created if arrivals else None
    deadline = time.monotonic() + 20   # the devices' update events, then the controller's verdict
    while True:
        workers.poll(1.0)
        state = str(api.rollout_state(http, rollout_id).get("state"))
        if state != "running" or time.monotonic() > deadline:
            break
    result.rollout_final = f"{state} after {time.time() - created:.0f} s"


def _collect(workers: Workers, result: SimResult) -> None:
    for final in workers.finals.values():
        result.reconnects += int(final.get("reconnects", 0))
        for device, doc in final["devices"].items():
            result.sent[device] = int(doc["seq"])
            result.unacked += len(doc["unacked"])
            result.no_broker_login += int(bool(doc["refused"]))


def _wait_for_ingest(eng: Any, cfg: SimConfig, result: SimResult) -> None:
    """Until the store holds as many messages as were sent ("complete"), nothing new arrived for 20 s
    ("stalled": what is missing is lost), or the drain time is up while messages still arrive ("backlog":
    what is missing was still queued for ingest when the benchmark stopped the fleet)."""
    target = sum(result.sent.values())
    last, last_change = -1, time.monotonic()
    started = time.monotonic()
    while True:
        stored = check.stored_total(eng, cfg.group)
        if stored >= target:
            result.drain = "complete"
            break
        if stored != last:
            last, last_change = stored, time.monotonic()
        elif time.monotonic() - last_change > 20:
            result.drain = "stalled"
            break
        if time.monotonic() - started > cfg.drain_timeout_s:
            result.drain = "backlog"
            break
        time.sleep(0.5)
    result.drain_s = time.monotonic() - started
