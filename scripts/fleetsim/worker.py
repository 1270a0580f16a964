"""One simulator worker: an asyncio loop that runs a share of the devices and reports what they did.

A worker runs as its own process in the benchmark (``multiprocessing``) or as a thread in the test; it
talks to the conductor only through ``reports`` (``put``) and ``stop`` (``is_set``), which both
``multiprocessing`` and ``threading``/``queue`` provide.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fleetsim.devices import Credentials, DeviceSettings, SimulatedDevice, TelemetryBodies


class Reports(Protocol):
    def put(self, item: Any) -> None: ...


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    devices: Sequence[Credentials]
    settings: DeviceSettings
    connect_concurrency: int = 100   # connects in flight per worker (a real fleet does not reconnect at once)
    drain_s: float = 30.0            # after stop: how long to wait for the broker's last acknowledgements


def raise_fd_limit() -> int:
    """Every device holds a socket: lift the soft limit on open files to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_worker(plan: WorkerPlan, reports: Reports, stop: StopFlag) -> None:
    """Entry point of a worker process (or thread)."""
    raise_fd_limit()
    asyncio.run(_run(plan, reports, stop))


async def _run(plan: WorkerPlan, reports: Reports, stop: StopFlag) -> None:
    bodies = TelemetryBodies(plan.settings.model)
    devices = [SimulatedDevice(c, plan.settings, bodies) for c in plan.devices]
    gate = asyncio.Semaphore(plan.connect_concurrency)
    tasks = [asyncio.create_task(d.run(gate)) for d in devices]
    while not stop.is_set():
        reports.put(("progress", plan.index, _progress(devices)))
        await asyncio.sleep(0.5)
    for d in devices:
        d.sending = False
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    deadline = time.monotonic() + plan.drain_s
    while any(d.client.inflight for d in devices) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    reports.put(("final", plan.index, _final(devices)))
    for d in devices:
        d.client.disconnect()
    await asyncio.sleep(0.5)


def _progress(devices: Sequence[SimulatedDevice]) -> dict[str, Any]:
    return {
        "connected": sum(d.client.connected for d in devices),
        "ever_connected": sum(d.record.connected_at is not None for d in devices),
        "refused": sum(d.record.login_refused for d in devices),
        "sent": sum(d.record.seq for d in devices),
        "acked": sum(len(d.record.acked) for d in devices),
        "desired": {d.record.device_id: d.record.desired_at for d in devices if d.record.desired_at},
        "reconnects": sum(max(d.client.stats.connects - 1, 0) for d in devices),
    }


def _final(devices: Sequence[SimulatedDevice]) -> dict[str, Any]:
    return {
        **_progress(devices),
        "devices": {d.record.device_id: {"seq": d.record.seq, "unacked": d.unacked(), "refused": d.record.login_refused}
                    for d in devices},
    }
