"""Run ``tests/telemetry/emitter.py`` (a device emitting a known number of telemetry events through the
real spool and publisher) as its own process, so tests can SIGKILL and restart it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EMITTER = ROOT / "tests" / "telemetry" / "emitter.py"


def start_emitter(cfg_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'agent'}"}
    return subprocess.Popen([sys.executable, str(EMITTER), str(cfg_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@contextmanager
def running_emitter(cfg_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_emitter(cfg_path)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
