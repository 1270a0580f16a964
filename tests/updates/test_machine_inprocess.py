"""The update state machine inside a real agent (in-process), with bundles served over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgeml.bundle import SigningKey
from edgeml_agent.components import build_components
from edgeml_agent.config import parse_config
from edgeml_agent.daemon import Agent
from edgeml_agent.transport import HttpClient
from edgeml_agent.updates.component import UpdateComponent
from tests.support.bundle_server import BundleServer
from tests.updates.helpers import desired, versions, write_credentials


class Rig:
    def __init__(self, tmp: Path, key: SigningKey, fleet_key: SigningKey, *, targets: tuple[str, ...] = (),
                 poll_interval_s: float = 0, http: HttpClient | None = None,
                 bundles: dict[str, Path] | None = None) -> None:
        self.key, self.fleet_key = key, fleet_key
        self.bundles = bundles or versions(tmp, key)   # built once per module by a caller that passes them
        self.server = BundleServer(self.bundles["1.0.0"].parent).__enter__()
        trusted = tmp / "trusted"
        trusted.mkdir()
        (trusted / "builder.pub").write_bytes(key.public_pem())
        self.data = tmp / "agent"
        # the fleet key has its own role on the device: trusted/fleet/, never beside the bundle signers
        (self.data / "trusted" / "fleet").mkdir(parents=True)
        (self.data / "trusted" / "fleet" / "fleet.pub").write_bytes(fleet_key.public_pem())
        write_credentials(self.data, self.server.base_url)
        config = parse_config({
            "data_dir": str(self.data), "trusted_keys": [str(trusted)], "server": {"port": 0},
            "telemetry": {"enabled": False},
            "updates": {"poll_interval_s": poll_interval_s, "probation_s": 1.0, "min_requests": 5,
                        "targets": list(targets), "download_attempts": 2, "download_retry_s": 0.1},
        })
        self.agent = Agent(config, components=build_components, http=http)
        self.agent.store.install(self.bundles["1.0.0"])
        self.agent.start()
        assert self.agent.server is not None
        self.url = f"http://127.0.0.1:{self.agent.server.port}"
        self.updates = next(c for c in self.agent.components if isinstance(c, UpdateComponent))
        self.failures: list[int] = []
        self._traffic = threading.Event()

    def offer(self, version: str, **kw: Any) -> None:
        bundle = self.bundles[version]
        self.updates.offer(desired(self.fleet_key, bundle, self.server.url(bundle.name), version=version, **kw))

    def serving(self) -> str:
        return str(httpx.get(f"{self.url}/v1/models/m", timeout=5).json()["version"])

    def wait_idle(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        time.sleep(0.3)
        while time.monotonic() < deadline:
            rec = self.updates.records.load()
            if rec.state == "idle" and rec.history:
                return {"state": rec.state, "committed": rec.committed, "refused": rec.refused, "reason": rec.reason,
                        "history": rec.history}
            time.sleep(0.1)
        raise AssertionError(f"update did not finish: {self.updates.records.load()}")

    def traffic(self, batch: int = 4) -> threading.Thread:
        """Constant live load; records any failed request."""
        def run() -> None:
            x = np.random.default_rng(0).random((batch, 4), dtype=np.float32).tolist()
            with httpx.Client(timeout=10) as client:
                while not self._traffic.is_set():
                    r = client.post(f"{self.url}/v1/models/m/infer", json={"inputs": {"x": x}})
                    if r.status_code != 200:
                        self.failures.append(r.status_code)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def close(self) -> None:
        self._traffic.set()
        self.agent.stop()
        self.server.__exit__()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[SigningKey, dict[str, Path]]:
    """The four versions, built once for the module (building the slow model costs more than a test)."""
    key = SigningKey.generate()
    return key, versions(tmp_path_factory.mktemp("versions"), key)


@pytest.fixture
def rig(tmp_path: Path, built: tuple[SigningKey, dict[str, Path]]) -> Iterator[Rig]:
    r = Rig(tmp_path, built[0], SigningKey.generate(), targets=("x86-cpu",), bundles=built[1])
    yield r
    r.close()


def test_good_update_commits_without_failing_a_request(rig: Rig) -> None:
    rig.traffic()
    rig.offer("2.0.0")
    result = rig.wait_idle()
    assert result["committed"] == {"m": "2.0.0"}
    assert rig.serving() == "2.0.0"
    assert rig.agent.store.current("m") == "2.0.0"
    assert [h[3] for h in result["history"]][-8:] == ["downloading", "verifying", "staging", "smoke_testing",
                                                      "switching", "probation", "committed", "idle"]
    time.sleep(0.3)
    rig._traffic.set()
    time.sleep(0.3)
    assert rig.failures == []


def test_model_failing_on_live_inputs_is_rolled_back_by_itself(rig: Rig) -> None:
    rig.traffic(batch=4)
    rig.offer("3.0.0")
    result = rig.wait_idle()
    assert "error rate" in result["reason"]
    assert "m@3.0.0" in result["refused"]
    assert "rolling_back" in [h[3] for h in result["history"]]
    assert rig.serving() == "1.0.0" and rig.agent.store.current("m") == "1.0.0"


def test_much_slower_model_is_rolled_back_on_latency(rig: Rig) -> None:
    rig.traffic(batch=1)
    time.sleep(1.0)  # a baseline of the old version's latency
    rig.offer("3.1.0", probation={"seconds": 1.5, "min_requests": 5, "max_latency_regression": 1.0})
    result = rig.wait_idle()
    assert "p50 latency" in result["reason"], result
    assert rig.serving() == "1.0.0"
