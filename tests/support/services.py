"""Policy for tests that need a real server or tool that may be absent on a user's laptop.

Locally such a test skips with a clear reason; under ``CI=true`` a missing server is a failure, never
a skip, because a green CI that skipped its broker tests proves nothing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import Any

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when ``condition`` is false."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true and a required service is missing: {reason}")
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[Any], timeout: float, sig: int = signal.SIGTERM) -> int:
    """Ask a process to stop (SIGTERM: its graceful path), kill it if it has not within ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
