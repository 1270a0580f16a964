"""SIGTERM during load: the agent stops accepting, answers every request it accepted, exits 0."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.agent.agent_process import AgentProcess, install, write_config
from tests.support.bundles import make_bundle
from tests.support.services import free_port
from tests.support.tiny_models import tiny_mlp

pytestmark = pytest.mark.slow


def test_sigterm_during_load_loses_no_accepted_request(tmp_path, signing_key):
    (tmp_path / "k.pub").write_bytes(signing_key.public_pem())
    port = free_port()
    # A 30 ms batching window keeps requests in flight inside the agent when SIGTERM arrives.
    config = write_config(tmp_path / "agent.toml", tmp_path / "data", tmp_path / "k.pub", port,
                          models={"mlp": {"max_batch_size": 8, "max_wait_ms": 30}})
    install(config, make_bundle(tmp_path, signing_key, tiny_mlp(tmp_path / "m.onnx"), name="mlp"))
    ok, bad, refused, errors = [0], [], [0], []
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        x = np.full((1, 4), float(i), np.float32)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            while not stop.is_set():
                try:
                    resp = c.post("/v1/models/mlp/infer", json={"inputs": x.tolist()})
                except httpx.TransportError as exc:
                    # Connection refused/closed before the agent read the request: not accepted.
                    with lock:
                        refused[0] += 1
                        errors.append(repr(exc))
                    time.sleep(0.01)
                    continue
                with lock:
                    if resp.status_code == 200 and len(resp.json()["outputs"]["y"][0]) == 3:
                        ok[0] += 1
                    else:
                        bad.append(f"{resp.status_code} {resp.text[:200]}")

    with AgentProcess(config, port, tmp_path / "agent.log") as agent, ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(client, i) for i in range(12)]
        deadline = time.monotonic() + 60          # the machine may be busy: wait for real load, not a fixed time
        while ok[0] < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = ok[0]
        agent.terminate()
        code = agent.wait(30)
        time.sleep(0.3)                           # clients keep trying against the stopped agent
        stop.set()
        for f in futures:
            f.result()
        log = agent.log()
    assert code == 0, log
    assert bad == []
    assert before > 0 and refused[0] > 0, (before, refused, errors[:3], log)  # load, then refusals
    m = re.search(r"drained: (\d+) request\(s\) accepted, (\d+) answered", log)
    assert m, log
    accepted, answered = int(m.group(1)), int(m.group(2))
    # every request the agent accepted was answered, and every answer reached a client as a 200
    assert accepted == answered == ok[0] + agent.health_answers


def test_console_script_entry_point_runs_the_same_cli(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "edgeml-agent"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "run" in out.stdout and "install" in out.stdout and "status" in out.stdout
    bad = subprocess.run([str(script), "run", "--config", str(tmp_path / "missing.toml")], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "cannot read agent config" in bad.stderr
