"""Table-driven crash test: a real agent process is SIGKILLed inside each state of an update, restarted,
and must end committed on the new verified version or back on the old one — serving valid answers,
never a half-written model. Several runs per state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edgeml.bundle import SigningKey, TrustStore, load_unpacked
from edgeml_agent.store import Store
from tests.agent.agent_process import AGENT_CLI
from tests.support.bundle_server import BundleServer
from tests.support.bundles import make_bundle
from tests.support.services import free_port, stop_process
from tests.support.tiny_models import tiny_mlp
from tests.updates.helpers import desired, failing_on_batches, write_credentials

# (state to die in, fault point, bundle offered, version it must end on)
CASES = [
    ("downloading", "half", "2.0.0", "2.0.0"),
    ("verifying", "hold", "2.0.0", "2.0.0"),
    ("staging", "hold", "2.0.0", "2.0.0"),
    ("smoke_testing", "hold", "2.0.0", "2.0.0"),
    ("switching", "hold", "2.0.0", "2.0.0"),
    ("switching", "mid", "2.0.0", "2.0.0"),
    ("probation", "hold", "2.0.0", "2.0.0"),
    ("committed", "hold", "2.0.0", "2.0.0"),
    ("rolling_back", "hold", "3.0.0", "1.0.0"),
    ("failed", "hold", "untrusted", "1.0.0"),
]
RUNS = 2
X = np.random.default_rng(7).random((4, 4), dtype=np.float32)


class Built:
    """Keys, models and bundles, built once for every run of the table."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.key, self.fleet_key = tmp, SigningKey.generate(), SigningKey.generate()
        src, out, rogue = tmp / "src", tmp / "bundles", tmp / "rogue"
        for d in (src, out, rogue):
            d.mkdir()
        self.models = {"1.0.0": tiny_mlp(src / "v1.onnx", seed=0), "2.0.0": tiny_mlp(src / "v2.onnx", seed=1),
                       "3.0.0": failing_on_batches(src / "v3.onnx")}
        self.bundles = {v: make_bundle(out, self.key, p, version=v) for v, p in self.models.items()}
        self.bundles["untrusted"] = make_bundle(rogue, SigningKey.generate(), tiny_mlp(src / "rogue.onnx", seed=8),
                                                version="2.2.0")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("crash-bundles"))


class Device:
    def __init__(self, tmp: Path, built: Built) -> None:
        self.tmp, self.built = tmp, built
        self.models, self.bundles, self.fleet_key = built.models, built.bundles, built.fleet_key
        trusted = tmp / "trusted"
        trusted.mkdir()
        (trusted / "builder.pub").write_bytes(built.key.public_pem())
        (trusted / "fleet.pub").write_bytes(built.fleet_key.public_pem())
        self.data = tmp / "agent"
        self.port = free_port()
        self.config = tmp / "agent.toml"
        self.server = BundleServer(built.tmp).__enter__()
        write_credentials(self.data, self.server.base_url)
        self.config.write_text("\n".join([
            f'data_dir = "{self.data}"', f'trusted_keys = ["{trusted}"]',
            "[server]", f"port = {self.port}", "drain_timeout_s = 5",
            "[telemetry]", "enabled = false",
            "[updates]", "poll_interval_s = 0.2", "probation_s = 1.5", "min_requests = 3",
            "download_attempts = 3", "download_retry_s = 0.2", "",
        ]))
        self.trust = TrustStore([built.key.public_key])
        Store(self.data, self.trust).install(self.bundles["1.0.0"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def offer(self, which: str) -> None:
        bundle = self.bundles[which]
        version = "2.2.0" if which == "untrusted" else which
        rel = bundle.relative_to(self.built.tmp).as_posix()
        self.server.desired = desired(self.fleet_key, bundle, self.server.url(rel), version=version,
                                      probation={"seconds": 1.5, "min_requests": 3})

    def start(self, fault: str | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("EDGEML_UPDATE_FAULT", None)
        if fault:
            env["EDGEML_UPDATE_FAULT"] = fault
        log = open(self.tmp / "agent.log", "ab")  # noqa: SIM115 - handed to the process
        self.proc = subprocess.Popen([*AGENT_CLI, "run", "--config", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, env=env)

    def wait_for(self, predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.proc is None or self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.log()}")

    def record(self) -> dict:  # type: ignore[type-arg]
        try:
            return json.loads((self.data / "updates" / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)
        self.server.__exit__()

    def log(self) -> str:
        return (self.tmp / "agent.log").read_text(errors="replace")[-4000:]

    def answer(self, batch: np.ndarray = X) -> tuple[int, str | None, np.ndarray | None]:
        try:
            r = httpx.post(f"{self.url}/v1/models/m/infer", json={"inputs": {"x": batch.tolist()}}, timeout=5)
            version = httpx.get(f"{self.url}/v1/models/m", timeout=5).json().get("version")
        except httpx.TransportError:
            return 0, None, None
        body = r.json()
        return r.status_code, version, np.asarray(body["outputs"]["y"], dtype=np.float32) if r.status_code == 200 else None


def _expected(model: Path) -> np.ndarray:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]


@pytest.mark.slow
@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize(("state", "point", "offered", "final"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_sigkill_inside_each_state_ends_safe(tmp_path: Path, built: Built, state: str, point: str,
                                             offered: str, final: str, run: int) -> None:
    dev = Device(tmp_path, built)
    traffic_stop = threading.Event()
    try:
        dev.offer(offered)
        dev.start(fault=f"{state}:{point}")
        if state == "rolling_back":  # live traffic that the failing model cannot answer
            def load() -> None:
                with httpx.Client(timeout=5) as client:
                    while not traffic_stop.is_set():
                        try:
                            client.post(f"{dev.url}/v1/models/m/infer", json={"inputs": {"x": X.tolist()}})
                        except httpx.TransportError:
                            time.sleep(0.05)
            threading.Thread(target=load, daemon=True).start()
        holding = dev.data / "updates" / "holding"
        dev.wait_for(holding.exists, 60, f"the agent to reach {state}:{point}")
        assert holding.read_text().strip() == f"{state}:{point}"
        assert dev.record()["state"] == state  # the record was saved before the side effect
        dev.kill()
        traffic_stop.set()
        holding.unlink()

        dev.start()
        dev.wait_for(lambda: dev.record().get("state") == "idle", 90, "the update to finish after the restart")
        status, version, outputs = dev.answer()
        assert status == 200 and version == final, dev.log()
        np.testing.assert_allclose(outputs, _expected(dev.models[final]), rtol=1e-4, atol=1e-5)
        current = (dev.data / "versions" / "m" / "current").read_text().strip()
        assert current == final
        load_unpacked(dev.data / "versions" / "m" / current, dev.trust)  # intact: every hash still matches
        rec = dev.record()
        if final == offered:
            assert rec["committed"] == {"m": final}
        else:
            assert rec["reason"]
            assert any(k.startswith("m@") for k in rec["refused"])
    finally:
        traffic_stop.set()
        dev.stop()
