"""The publisher thread sleeps while there is nothing to do, and wakes at once when there is.

Every wake-up of a Python thread on a busy device costs the inference threads a GIL hand-over, so an
idle publisher must not poll; a message emitted from another thread must still go out immediately.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeml_agent.telemetry.publisher import BrokerSettings, TelemetryPublisher
from edgeml_agent.telemetry.spool import Spool
from tests.support.mosquitto import running_mosquitto


@pytest.mark.mosquitto
@pytest.mark.parametrize("with_tick", [False, True])
def test_idle_publisher_sleeps_and_an_emit_wakes_it(tmp_path: Path, with_tick: bool) -> None:
    ticks: list[float] = []
    with running_mosquitto(tmp_path / "broker") as broker:
        publisher = TelemetryPublisher(BrokerSettings(f"mqtt://127.0.0.1:{broker.port}", "dev-1"),
                                       Spool(tmp_path / "spool.db", "dev-1"),
                                       tick=(lambda p: ticks.append(time.monotonic())) if with_tick else None,
                                       tick_interval_s=0.5)
        waits: list[float] = []
        original = publisher._wait

        def counting_wait(timeout: float) -> None:
            waits.append(timeout)
            original(timeout)

        publisher._wait = counting_wait  # type: ignore[method-assign]
        publisher.start()
        try:
            deadline = time.monotonic() + 10
            while not publisher.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert publisher.connected
            time.sleep(0.5)   # the retained 'online' status and the subscriptions settle
            waits.clear()
            time.sleep(2.0)
            # idle: a handful of waits (ticks, keep-alive), never a polling loop
            assert len(waits) <= 12, f"{len(waits)} wake-ups in 2 s while idle"
            before = publisher.acked
            sent_at = time.monotonic()
            publisher.emit("event", {"event": "test"})
            while publisher.acked == before and time.monotonic() - sent_at < 5:
                time.sleep(0.005)
            assert publisher.acked == before + 1
            assert time.monotonic() - sent_at < 0.4   # not held back until the next tick or timeout
            if with_tick:
                assert len(ticks) >= 4   # the tick still runs on time while the thread sleeps
        finally:
            publisher.stop()
