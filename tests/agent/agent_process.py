"""Run a real `edgeml-agent run` process for tests: config, installed bundles, free port, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.support.services import free_port, stop_process

AGENT_CLI = [sys.executable, "-m", "edgeml_agent.cli"]


def write_config(path: Path, data_dir: Path, trusted: Path, port: int, *, token: str | None = None,
                 extra: str = "", models: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    lines = [f'data_dir = "{data_dir}"', f'trusted_keys = ["{trusted}"]', "[server]", f"port = {port}",
             "max_body_bytes = 262144", "drain_timeout_s = 20"]
    if token:
        lines.append(f'api_token = "{token}"')
    lines.append(extra)
    for name, opts in (models or {}).items():
        lines.append(f"[models.{name}]")
        lines += [f"{k} = {v}" for k, v in opts.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def install(config: Path, bundle: Path) -> str:
    out = subprocess.run([*AGENT_CLI, "install", str(bundle), "--config", str(config)], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout


class AgentProcess:
    """``with AgentProcess(config) as agent:`` starts the daemon and waits until /healthz answers."""

    def __init__(self, config: Path, port: int, log: Path, token: str | None = None) -> None:
        self.config, self.port, self.log_path, self.token = config, port, log, token
        self.url = f"http://127.0.0.1:{port}"
        self.health_answers = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def __enter__(self) -> AgentProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*AGENT_CLI, "run", "--config", str(self.config)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    self.health_answers += 1
                    return self
                self.health_answers += 1
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"agent did not come up:\n{self.log()}")

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        returncode = stop_process(self.proc, 30)
        self._log.close()
        return returncode

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        self.stop()


def new_port() -> int:
    return free_port()
