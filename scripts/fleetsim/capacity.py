"""How many simulated devices this machine can drive: N devices against a bare Mosquitto (anonymous, no
fleet server), telemetry every 10 s, for a while; prints the time to connect them all, the messages the
broker acknowledged, and the simulator's CPU per message. Run it before trusting a large bench_fleet run:
the simulator must not be the bottleneck it measures.

    python scripts/fleetsim/capacity.py --devices 10000 --seconds 40 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "agent"),
                str(Path(__file__).resolve().parents[1])]

from fleetsim.conductor import cpu_seconds  # noqa: E402
from fleetsim.devices import Credentials, DeviceSettings  # noqa: E402
from fleetsim.setups import _start_mosquitto  # noqa: E402
from fleetsim.worker import WorkerPlan, raise_fd_limit, run_worker  # noqa: E402
from tests.support.services import free_port, stop_process  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="edgeml-sim-capacity-"))
    port = free_port()
    files = work / "files"
    files.mkdir()
    (files / "passwords").write_text("")
    (files / "acl").write_text("pattern readwrite edgeml/#\n")
    conf_extra = work / "mosquitto"
    broker = _start_mosquitto(conf_extra, port, files, anonymous=True)
    ctx = multiprocessing.get_context("spawn")
    reports, stop = ctx.Queue(), ctx.Event()
    devices = [Credentials(f"sim-{i:05d}", f"sim-{i:05d}", "x", "127.0.0.1", port) for i in range(args.devices)]
    plans = [WorkerPlan(i, devices[i::args.workers], DeviceSettings()) for i in range(args.workers)]
    procs = [ctx.Process(target=run_worker, args=(plan, reports, stop), daemon=True) for plan in plans]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    progress: dict[int, dict] = {}  # type: ignore[type-arg]
    connected_s = None
    while time.monotonic() - started < args.seconds:
        while not reports.empty():
            _, index, doc = reports.get()
            progress[index] = doc
        if connected_s is None and sum(d["ever_connected"] for d in progress.values()) >= args.devices:
            connected_s = time.monotonic() - started
        time.sleep(0.5)
    cpu = cpu_seconds([proc.pid for proc in procs if proc.pid])
    broker_cpu = cpu_seconds([broker.pid])
    acked = sum(d["acked"] for d in progress.values())
    stop.set()
    for proc in procs:
        proc.join(60)
    stop_process(broker, 10)
    print(f"devices {args.devices}, workers {args.workers}, {args.seconds:.0f} s")
    print(f"connected all: {'no' if connected_s is None else f'{connected_s:.1f} s'} "
          f"({sum(d['ever_connected'] for d in progress.values())} connected)")
    print(f"messages acknowledged: {acked} ({acked / args.seconds:.0f}/s)")
    print(f"simulator CPU: {cpu:.1f} s ({cpu / max(acked, 1) * 1e6:.0f} us per message, connects included); "
          f"mosquitto CPU: {broker_cpu:.1f} s")


if __name__ == "__main__":
    main()
