"""Table-driven crash test: a real agent process is SIGKILLed inside each state of an update, restarted,
and must end committed on the new verified version or back on the old one — serving valid answers,
never a half-written model — through the exact chain of states the table gives. Several runs per state.

The agent is started through ``tests.updates.agent_with_hook``, which installs the update machine's
``on_state`` hook (production code has no fault switch); after the kill it restarts as plain
``edgeml-agent run``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edgeml.bundle import SigningKey, TrustStore, load_unpacked
from edgeml.fileio import sha256_file
from edgeml_agent.store import Store
from tests.agent.agent_process import AGENT_CLI
from tests.support.bundle_server import BundleServer
from tests.support.bundles import make_bundle
from tests.support.services import stop_process
from tests.support.tiny_models import tiny_mlp
from tests.updates.helpers import desired, failing_on_batches, slow_model, write_credentials

ROOT = Path(__file__).resolve().parents[2]
HOOKED_AGENT = [sys.executable, "-m", "tests.updates.agent_with_hook"]
COMMIT = ["verifying", "staging", "smoke_testing", "switching", "probation", "committed", "idle"]
REFUSE = ["failed", "idle"]
ROLL_BACK = ["probation", "rolling_back", "failed", "idle"]

# (state to die in, fault point, bundle offered, version it must end on, the target of each transition
# after the restart, in order: the agent re-enters the state it died in, so the chain starts after it)
CASES = [
    ("downloading", "half", "2.0.0", "2.0.0", COMMIT),
    ("verifying", "enter", "2.0.0", "2.0.0", COMMIT[1:]),
    ("staging", "enter", "2.0.0", "2.0.0", COMMIT[2:]),
    ("smoke_testing", "enter", "2.0.0", "2.0.0", COMMIT[3:]),
    ("switching", "enter", "2.0.0", "2.0.0", COMMIT[4:]),
    ("switching", "mid", "2.0.0", "2.0.0", COMMIT[4:]),
    ("probation", "enter", "2.0.0", "2.0.0", COMMIT[5:]),
    ("committed", "enter", "2.0.0", "2.0.0", COMMIT[6:]),
    ("rolling_back", "enter", "3.0.0", "1.0.0", ROLL_BACK[2:]),
    ("failed", "enter", "untrusted", "1.0.0", REFUSE[1:]),
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
        # 2.0.0 is several download chunks long, so "half" really is half a file (a resume with Range)
        self.models = {"1.0.0": tiny_mlp(src / "v1.onnx", seed=0),
                       "2.0.0": slow_model(src / "v2.onnx", layers=1, width=300, seed=1),
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
        self.data = tmp / "agent"
        # the fleet key has its own role on the device: trusted/fleet/, never beside the bundle signers
        (self.data / "trusted" / "fleet").mkdir(parents=True)
        (self.data / "trusted" / "fleet" / "fleet.pub").write_bytes(built.fleet_key.public_pem())
        self.config = tmp / "agent.toml"
        self.server = BundleServer(built.tmp).__enter__()
        write_credentials(self.data, self.server.base_url)
        self.config.write_text("\n".join([
            f'data_dir = "{self.data}"', f'trusted_keys = ["{trusted}"]',
            # port 0: each start binds a port of its own (a port picked before a restart can be taken
            # by then); `url` reads the one in use from the agent's log
            "[server]", "port = 0", "drain_timeout_s = 5",
            "[telemetry]", "enabled = false",
            "[updates]", "poll_interval_s = 0.2", "probation_s = 1.5", "min_requests = 3",
            "download_attempts = 3", "download_retry_s = 0.2", "",
        ]))
        self.trust = TrustStore([built.key.public_key])
        Store(self.data, self.trust).install(self.bundles["1.0.0"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The API of the agent running now: the address its log announced after the latest start."""
        def announced() -> list[str]:
            return re.findall(r"edgeml-agent listening on (http://[\d.]+:\d+)", self.log(full=True))

        self.wait_for(lambda: len(announced()) >= self.starts, 60, "the agent's API to listen")
        return announced()[-1]

    def offer(self, which: str) -> None:
        bundle = self.bundles[which]
        version = "2.2.0" if which == "untrusted" else which
        rel = bundle.relative_to(self.built.tmp).as_posix()
        self.server.desired = desired(self.fleet_key, bundle, self.server.url(rel), version=version,
                                      probation={"seconds": 1.5, "min_requests": 3})

    def start(self, fault: str | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        command = [*HOOKED_AGENT, "--fault", fault] if fault else [*AGENT_CLI, "run"]
        self.starts += 1
        log = open(self.tmp / "agent.log", "ab")  # noqa: SIM115 - handed to the process
        self.proc = subprocess.Popen([*command, "--config", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=ROOT)

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

    def log(self, *, full: bool = False) -> str:
        text = (self.tmp / "agent.log").read_text(errors="replace")
        return text if full else text[-4000:]

    def answer(self, batch: np.ndarray = X) -> tuple[int, str | None, np.ndarray | None]:
        try:
            r = httpx.post(f"{self.url}/v1/models/m/infer", json={"inputs": {"x": batch.tolist()}}, timeout=5)
            version = httpx.get(f"{self.url}/v1/models/m", timeout=5).json().get("version")
        except httpx.TransportError:
            return 0, None, None
        body = r.json()
        outputs = np.asarray(body["outputs"]["y"], dtype=np.float32) if r.status_code == 200 else None
        return r.status_code, version, outputs


def _expected(model: Path) -> np.ndarray:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]


@pytest.mark.slow
@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize(("state", "point", "offered", "final", "chain"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_sigkill_inside_each_state_ends_safe(tmp_path: Path, built: Built, state: str, point: str,
                                             offered: str, final: str, chain: list[str], run: int) -> None:
    dev = Device(tmp_path, built)
    traffic_stop = threading.Event()
    try:
        dev.offer(offered)
        dev.start(fault=f"{state}:{point}")
        if state == "rolling_back":  # live traffic that the failing model cannot answer
            url = dev.url

            def load() -> None:
                with httpx.Client(timeout=5) as client:
                    while not traffic_stop.is_set():
                        try:
                            client.post(f"{url}/v1/models/m/infer", json={"inputs": {"x": X.tolist()}})
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
        before = len(dev.record()["history"])
        part = dev.data / "updates" / "downloads" / f"{sha256_file(dev.bundles[offered])}.edgepkg.part"
        on_disk = part.stat().st_size if part.exists() else 0

        dev.start()
        dev.wait_for(lambda: dev.record().get("state") == "idle", 90, "the update to finish after the restart")
        status, version, outputs = dev.answer()
        assert status == 200 and version == final, dev.log()
        np.testing.assert_allclose(outputs, _expected(dev.models[final]), rtol=1e-4, atol=1e-5)
        current = (dev.data / "versions" / "m" / "current").read_text().strip()
        assert current == final
        load_unpacked(dev.data / "versions" / "m" / current, dev.trust)  # intact: every hash still matches
        rec = dev.record()
        assert [h[3] for h in rec["history"][before:]] == chain, rec["history"]
        if state == "downloading":   # resumed from the bytes on disk, not downloaded again from 0
            size = dev.bundles[offered].stat().st_size
            assert 0 < on_disk < size
            ranges = [r for path, r in dev.server.requests if path.endswith(".edgepkg")]
            assert ranges == [None, f"bytes={on_disk}-"], ranges
        if final == offered:
            assert rec["committed"] == {"m": final}
        else:
            assert rec["reason"]
            assert any(k.startswith("m@") for k in rec["refused"])
    finally:
        traffic_stop.set()
        dev.stop()
