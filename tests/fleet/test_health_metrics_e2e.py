"""Fleet ``/v1/health`` and ``/metrics`` read end to end: a fleet server process (embedded broker), three
real agent processes enrolled with ``edgeml-agent enroll``, telemetry on, and inference traffic of known
size from this test.

Agents A and B serve m@1.0.0 (A: calibration-like inputs plus a few malformed requests; B: shifted
inputs), agent C serves m@2.0.0. What the fleet reports per model version — devices, requests, errors,
error rate, p50/p95, drift — must match what was sent, the agents' own ``/metrics`` counters and the
per-device telemetry; the malformed requests are the client's mistake, so they are in none of it (a
client must not move a model's error rate, which rollout gates read); ``/metrics`` must be valid Prometheus
text with the same figures; a stopped agent
must show as offline in ``/metrics`` and in ``/v1/devices`` alike.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from edgeml.bundle import SigningKey
from edgeml.compiler.stats import reference_stats
from edgeml.fleet.bootstrap import create_first_admin
from edgeml.runtimes import open_model
from edgeml.telemetry.latency import LATENCY_BUCKETS_MS
from tests.agent.agent_process import AGENT_CLI, AgentProcess, install, write_config
from tests.fleet.rollouts.real_fleet import wait_for
from tests.fleet.server_process import ServerProcess, fleet_server
from tests.support.bundles import make_bundle
from tests.support.services import free_port
from tests.support.tiny_models import tiny_mlp

AGENT_EXTRA = """
[telemetry]
interval_s = 0.5
heartbeat_s = 1
stats_budget = 1.0
[updates]
enabled = false
"""
ROWS = 8            # rows per inference request
BAD = [[1.0, 2.0, 3.0]]   # three features for a four-feature model: refused as bad input (the client's)


@dataclass
class Device:
    name: str
    version: str
    device_id: str
    agent: AgentProcess
    ok: int           # successful requests sent
    bad: int          # malformed requests sent (the agent counts them as rejected, not as the model's)
    shift: float      # mean of the inputs (0 = like the calibration data)


@dataclass
class World:
    server: ServerProcess
    admin: str
    db_file: Path
    devices: list[Device]

    def http(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {token or self.admin}"},
                            timeout=30)


def _bundle(tmp: Path, key: SigningKey, version: str, seed: int) -> Path:
    """A tiny MLP bundle whose reference statistics come from N(0, 1) calibration inputs (for drift)."""
    model = tiny_mlp(tmp / f"m-{seed}.onnx", seed=seed)
    calib = np.random.default_rng(seed).normal(0.0, 1.0, (512, 4)).astype(np.float32)
    with open_model(model, "onnxruntime") as backend:
        outputs = backend.run({"x": calib})
    stats = reference_stats({"x": calib}, outputs, samples=len(calib))
    return make_bundle(tmp / f"m-{version}.edgepkg", key, model, name="m", version=version,
                       extra={"reference_stats": stats})


def _enrolled_agent(tmp: Path, server: ServerProcess, enroll_token: str, name: str,
                    bundle: Path) -> tuple[str, AgentProcess]:
    """Enrol with ``edgeml-agent enroll``, install the bundle offline, start ``edgeml-agent run``."""
    agent_dir = tmp / name
    out = subprocess.run([*AGENT_CLI, "enroll", "--server", server.url, "--token", enroll_token, "--data-dir",
                          str(agent_dir), "--name", name], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    device_id = json.loads((agent_dir / "credentials.json").read_text())["device_id"]
    port = free_port()
    config = write_config(tmp / f"{name}.toml", agent_dir, agent_dir / "trusted", port, extra=AGENT_EXTRA)
    install(config, bundle)
    return device_id, AgentProcess(config, port, tmp / f"{name}.log").__enter__()


AgentJob = Callable[[], tuple[str, AgentProcess]]


def _start_agents(stack: ExitStack, jobs: list[AgentJob]) -> list[tuple[str, AgentProcess]]:
    """Run the jobs side by side (mostly process start-up); every agent that started is stopped with the stack."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job) for job in jobs]
    for f in futures:
        if f.exception() is None:
            stack.callback(f.result()[1].stop)
    return [f.result() for f in futures]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    key = SigningKey.generate()
    bundles = {"1.0.0": _bundle(tmp_path, key, "1.0.0", seed=0), "2.0.0": _bundle(tmp_path, key, "2.0.0", seed=1)}
    data = tmp_path / "fleet"
    data.mkdir()
    admin = create_first_admin(f"sqlite:///{data / 'fleet.db'}")
    plan = [("cam-a", "1.0.0", 30, 6, 0.0), ("cam-b", "1.0.0", 20, 0, 2.5), ("cam-c", "2.0.0", 10, 0, 0.0)]
    with ExitStack() as stack:
        server = stack.enter_context(fleet_server(data))
        http = stack.enter_context(httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"},
                                                timeout=30))
        assert http.post("/v1/keys", json={"name": "ci", "public_pem": key.public_pem().decode()}).status_code == 201
        for path in bundles.values():
            assert http.post("/v1/bundles", content=path.read_bytes()).status_code == 201
        tokens = [http.post("/v1/enrollment-tokens", json={}).json()["token"] for _ in plan]
        running = _start_agents(stack, [partial(_enrolled_agent, tmp_path, server, token, name, bundles[version])
                                        for (name, version, *_), token in zip(plan, tokens, strict=True)])
        devices = [Device(name, version, device_id, agent, ok, bad, shift)
                   for (name, version, ok, bad, shift), (device_id, agent) in zip(plan, running, strict=True)]
        yield World(server, admin, data / "fleet.db", devices)


def _send_traffic(devices: list[Device]) -> None:
    rng = np.random.default_rng(7)
    for d in devices:
        with httpx.Client(base_url=d.agent.url, timeout=10) as client:
            # the malformed ones first: had they been counted, they would be in the fleet before the rest
            for _ in range(d.bad):
                assert client.post("/v1/models/m/infer", json={"inputs": BAD}).status_code == 400
            for _ in range(d.ok):
                x = rng.normal(d.shift, 1.0, (ROWS, 4)).astype(np.float32)
                r = client.post("/v1/models/m/infer", json={"inputs": {"x": x.tolist()}})
                assert r.status_code == 200 and r.json()["version"] == d.version, r.text


_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_LINE = re.compile(rf"[a-zA-Z_:][a-zA-Z0-9_:]*(?:\{{{_LABEL}(?:,{_LABEL})*\}})? \S+")
COMMENT_LINE = re.compile(r"# (?:HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* \S.*")


def _families(body: str) -> dict[str, Any]:
    """Parse Prometheus text strictly: every line has the exposition format's shape (the client library's
    parser lets some through, e.g. no space before the value), every family is typed and documented."""
    assert body.endswith("\n")
    bad = [line for line in body.splitlines() if not (SAMPLE_LINE.fullmatch(line) or COMMENT_LINE.fullmatch(line))]
    assert not bad, bad
    families = {f.name: f for f in text_string_to_metric_families(body)}
    for f in families.values():
        assert f.type != "unknown" and f.documentation, f"{f.name}: no # TYPE / # HELP"
    return families


def _agent_latency(devices: list[Device]) -> dict[str, list[int]]:
    """Per version, the agents' own latency histograms (from their /metrics), per bucket, summed."""
    out: dict[str, list[int]] = {}
    for d in devices:
        family = _families(httpx.get(d.agent.url + "/metrics", timeout=10).text)["edgeml_request_duration_seconds"]
        cumulative = sorted((float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket"))
        counts = [int(c - p) for (_, c), (_, p) in zip(cumulative, [(0.0, 0.0), *cumulative[:-1]], strict=True)]
        assert len(counts) == len(LATENCY_BUCKETS_MS) + 1
        total = out.setdefault(d.version, [0] * len(counts))
        out[d.version] = [a + b for a, b in zip(total, counts, strict=True)]
    return out


def _quantile_ms(histogram: list[int], q: float) -> float:
    """The documented rule: the upper bound of the bucket holding the q-th percentile (overflow: 2 x 5 s)."""
    rank, seen = q / 100 * sum(histogram), 0
    for i, count in enumerate(histogram):
        seen += count
        if count and seen >= rank:
            return float(LATENCY_BUCKETS_MS[i]) if i < len(LATENCY_BUCKETS_MS) else 2 * LATENCY_BUCKETS_MS[-1]
    raise AssertionError("empty histogram")


def _per_device(world: World) -> dict[str, dict[str, Any]]:
    with world.http() as http:
        return {d.device_id: http.get(f"/v1/telemetry/{d.device_id}").json() for d in world.devices}


def _all_telemetry_in(world: World) -> bool:
    docs = _per_device(world)
    return all(sum(w["requests"] for w in docs[d.device_id]["windows"]) == d.ok for d in world.devices)


def _logs(world: World) -> str:
    return world.server.log.read_text()[-3000:] + "".join(
        d.agent.log_path.read_text(errors="replace")[-1500:] for d in world.devices)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_health_and_metrics_report_what_the_agents_sent(world: World) -> None:
    # given three agents that served a known number of requests (some malformed, some drifted)
    _send_traffic(world.devices)
    # when their telemetry has reached the fleet
    wait_for("every request in the fleet's telemetry", lambda: _all_telemetry_in(world), 60, lambda: _logs(world))
    per_device = _per_device(world)
    with world.http() as http:
        health = {h["version"]: h for h in http.get("/v1/health").json() if h["model"] == "m"}
        health_5 = {h["version"]: h for h in http.get("/v1/health", params={"minutes": 5}).json() if h["model"] == "m"}
    # then each device's own figures are what it was sent
    for d in world.devices:
        windows = per_device[d.device_id]["windows"]
        assert {(w["model"], w["version"]) for w in windows} == {("m", d.version)}
        assert (sum(w["requests"] for w in windows), sum(w["errors"] for w in windows)) == (d.ok, 0)
        rejected = _families(httpx.get(d.agent.url + "/metrics", timeout=10).text)["edgeml_requests_rejected"]
        assert sum(s.value for s in rejected.samples if s.labels.get("reason") == "bad_input") == d.bad
    drift = {d.name: _drift(per_device[d.device_id]) for d in world.devices}
    assert drift["cam-a"] < 0.1 < 0.25 < drift["cam-b"], drift
    # and per model version the fleet adds the devices up: counts, error rate, quantiles, drift (the worst)
    latency = _agent_latency(world.devices)
    assert sorted(health) == ["1.0.0", "2.0.0"]
    for version, expected_drift in (("1.0.0", max(drift["cam-a"], drift["cam-b"])), ("2.0.0", drift["cam-c"])):
        mine = [d for d in world.devices if d.version == version]
        requests, errors = sum(d.ok for d in mine), 0
        h = health[version]
        assert (h["devices"], h["requests"], h["errors"]) == (len(mine), requests, errors)
        assert h["error_rate"] == round(errors / requests, 5)
        assert sum(latency[version]) == requests      # the agents' own counters saw the same requests
        assert (h["p50_ms"], h["p95_ms"]) == (_quantile_ms(latency[version], 50), _quantile_ms(latency[version], 95))
        assert h["drift"] == pytest.approx(expected_drift)
        # the rate is over the whole look-back time (10 minutes), not over the seconds spent serving
        assert h["requests_per_s"] == pytest.approx(requests / 600, abs=1e-3)
        assert {k: v for k, v in health_5[version].items() if k != "requests_per_s"} == {
            k: v for k, v in h.items() if k != "requests_per_s"}
    _check_metrics(world, health_5)
    _check_offline(world)


def _drift(doc: dict[str, Any]) -> float:
    scores = [x["score"] for x in doc["drift"] if x["model"] == "m"]
    assert len(scores) == 1, doc["drift"]
    return float(scores[0])


def _metrics(world: World) -> dict[str, Any]:
    with world.http() as http:
        r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
    return _families(r.text)


def _gauge(families: dict[str, Any], name: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.values()): s.value for s in families[name].samples}


def _check_metrics(world: World, health: dict[str, dict[str, Any]]) -> None:
    families = _metrics(world)
    assert _gauge(families, "edgeml_fleet_devices") == {("online",): 3, ("offline",): 0}
    for version, h in health.items():
        labels = ("m", version)
        assert _gauge(families, "edgeml_fleet_model_error_rate")[labels] == pytest.approx(h["errors"] / h["requests"])
        assert _gauge(families, "edgeml_fleet_model_latency_p95_ms")[labels] == h["p95_ms"]
        assert _gauge(families, "edgeml_fleet_model_drift_psi")[labels] == pytest.approx(h["drift"])
        assert _gauge(families, "edgeml_fleet_model_requests_per_second")[labels] == pytest.approx(
            h["requests"] / 300, rel=1e-3)
    # the ingest counters: everything stored is in the database once, nothing was refused
    engine = create_engine(f"sqlite:///{world.db_file}")

    def stored_matches_database() -> bool:
        stored = _metrics(world)["edgeml_fleet_ingest_stored"].samples[0].value
        with engine.connect() as conn:
            return bool(stored == conn.execute(text("SELECT count(*) FROM device_messages")).scalar_one())

    try:
        wait_for("the ingest's stored counter to match the stored rows", stored_matches_database, 20)
    finally:
        engine.dispose()
    ingest = {name: _metrics(world)[name].samples[0].value for name in ("edgeml_fleet_ingest_messages",
                                                                          "edgeml_fleet_ingest_rejected")}
    assert ingest["edgeml_fleet_ingest_rejected"] == 0 and ingest["edgeml_fleet_ingest_messages"] > 0


def _check_offline(world: World) -> None:
    # when one agent stops (it says "offline" on its way out)
    gone = world.devices[2]
    gone.agent.stop()
    wait_for("the stopped agent to count as offline",
             lambda: _gauge(_metrics(world), "edgeml_fleet_devices") == {("online",): 2, ("offline",): 1}, 30,
             lambda: _logs(world))
    # then the device list agrees with /metrics
    with world.http() as http:
        online = {d["id"]: d["online"] for d in http.get("/v1/devices").json()}
        offline_ids = [d["id"] for d in http.get("/v1/devices", params={"online": "false"}).json()]
    assert online == {d.device_id: d is not gone for d in world.devices}
    assert offline_ids == [gone.device_id]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_health_and_metrics_need_a_viewer_token(tmp_path: Path) -> None:
    data = tmp_path / "fleet"
    data.mkdir()
    admin = create_first_admin(f"sqlite:///{data / 'fleet.db'}")
    with fleet_server(data) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        def token(role: str) -> str:
            r = http.post("/v1/tokens", headers={"Authorization": f"Bearer {admin}"}, json={"name": role, "role": role})
            assert r.status_code == 201, r.text
            return str(r.json()["token"])

        enroll = http.post("/v1/enrollment-tokens", headers={"Authorization": f"Bearer {admin}"}, json={}).json()
        device = http.post("/v1/enroll", headers={"Authorization": f"Bearer {enroll['token']}"}, json={}).json()
        revoked = token("viewer")
        revoked_id = http.get("/v1/whoami", headers={"Authorization": f"Bearer {revoked}"}).json()["token_id"]
        assert http.delete(f"/v1/tokens/{revoked_id}", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        expected = {None: 401, "efl_not-a-token": 401, revoked: 401, device["api_token"]: 403,
                    token("viewer"): 200, token("deployer"): 200, admin: 200}
        for path in ("/v1/health", "/metrics"):
            for secret, status in expected.items():
                headers = {"Authorization": f"Bearer {secret}"} if secret else {}
                r = http.get(path, headers=headers)
                assert r.status_code == status, (path, secret, r.text)
                if status == 401:
                    assert r.headers["www-authenticate"] == "Bearer"
