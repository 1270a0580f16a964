"""CPU fallback, really running: a real agent serves bundles whose targets prefer accelerators this host
lacks, and reports the fallback and its reason in /v1/models, /metrics and its telemetry to a real broker.

Two bundles fall back here: a Jetson bundle (ONNX Runtime: TensorRT, then CUDA, then CPU; the agent config
allows the fallback and the other arch) and an Intel NPU bundle (OpenVINO: NPU, then GPU, then CPU). A
plain x86-cpu bundle is the control that must not be reported as a fallback.
"""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest

from edgeml.bundle import SigningKey
from tests.agent.agent_process import AgentProcess, install, write_config
from tests.fleet.mqtt_checks import Peer, connect
from tests.support.bundles import make_bundle
from tests.support.mosquitto import running_mosquitto
from tests.support.services import free_port
from tests.support.tiny_models import tiny_mlp

pytestmark = pytest.mark.slow
DEVICE = "dev-fallback"
# what each model must report: (runtime, device it runs on, device its bundle preferred, reason fragments)
EXPECTED = {
    "jetson": ("onnxruntime", "CPUExecutionProvider", "TensorrtExecutionProvider",
               ("TensorRT is not installed on this host", "no NVIDIA GPU/CUDA on this host")),
    "npu": ("openvino", "CPU", "NPU", ("openvino/NPU: NPU is not available here (openvino devices: CPU",)),
}


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fallback")
    key = SigningKey.generate()
    (tmp / "builder.pub").write_bytes(key.public_pem())
    model = tiny_mlp(tmp / "mlp.onnx")
    bundles = [make_bundle(tmp, key, model, name="jetson", target="jetson-orin"),
               make_bundle(tmp, key, model, name="npu", target="intel-npu", runtime="openvino"),
               make_bundle(tmp, key, model, name="plain", target="x86-cpu")]
    with running_mosquitto(tmp / "broker") as broker:
        peer, why = connect(broker.port, None, None)
        assert peer is not None, why
        assert peer.subscribe(f"edgeml/v1/{DEVICE}/#") == 1
        port = free_port()
        config = write_config(
            tmp / "agent.toml", tmp / "data", tmp / "builder.pub", port,
            extra="\n".join(["[runtime]", "cpu_fallback = true", "allow_other_arch = true", "num_threads = 1",
                             "[telemetry]", "enabled = true", f'broker = "mqtt://127.0.0.1:{broker.port}"',
                             f'device_id = "{DEVICE}"', "interval_s = 0.2", "heartbeat_s = 60"]))
        for bundle in bundles:
            assert "installed and current" in install(config, bundle)
        with AgentProcess(config, port, tmp / "agent.log") as agent:
            yield agent, peer
        peer.close()


def messages(peer: Peer, kind: str, predicate) -> list[dict]:
    """Wait until a message of ``kind`` on the device's topics satisfies ``predicate``; return all of that kind."""
    def found(received: list[tuple[str, bytes]]) -> bool:
        return any(predicate(m) for m in _decode(received, kind))
    return _decode(peer.wait_for(found), kind)


def _decode(received: list[tuple[str, bytes]], kind: str) -> list[dict]:
    out = []
    for topic, payload in received:
        if topic.endswith(("/telemetry", "/events")):
            msg = json.loads(payload)
            if msg["kind"] == kind:
                out.append(msg["body"])
    return out


def prometheus_samples(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of metric ``name`` (values dropped) in the text exposition format."""
    samples = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[len(name):line.rindex("}") + 1])
            samples.append({k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\") for k, v in labels})
    return samples


def test_models_listing_reports_each_fallback_and_its_reason(running):
    agent, _ = running
    models = {m["name"]: m for m in httpx.get(agent.url + "/v1/models", timeout=30).json()["models"]}
    assert sorted(models) == ["jetson", "npu", "plain"]
    for name, (runtime, device, preferred, reasons) in EXPECTED.items():
        m = models[name]
        assert (m["backend"], m["device"], m["fallback"]) == (runtime, device, True), m
        assert all(r in m["fallback_reason"] for r in reasons), m["fallback_reason"]
        assert m["discarded_backends"][0].startswith(f"{runtime}/{preferred}:")
    assert models["plain"]["fallback"] is False and models["plain"]["fallback_reason"] is None


def test_inference_runs_in_fallback_and_metrics_say_so_with_the_reason(running):
    agent, _ = running
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    answers = {n: httpx.post(f"{agent.url}/v1/models/{n}/infer", json={"inputs": {"x": x.tolist()}}, timeout=30)
               for n in ("jetson", "npu", "plain")}
    assert all(r.status_code == 200 for r in answers.values()), {n: r.text for n, r in answers.items()}
    outs = {n: np.array(r.json()["outputs"]["y"], np.float32) for n, r in answers.items()}
    np.testing.assert_allclose(outs["jetson"], outs["plain"], rtol=1e-5)   # same model, really run on the CPU
    np.testing.assert_allclose(outs["npu"], outs["plain"], rtol=1e-4, atol=1e-5)

    text = httpx.get(agent.url + "/metrics", timeout=30).text
    info = {s["model"]: s for s in prometheus_samples(text, "edgeml_model_info")}
    assert {n: info[n]["fallback"] for n in info} == {"jetson": "true", "npu": "true", "plain": "false"}
    fallbacks = {s["model"]: s for s in prometheus_samples(text, "edgeml_model_fallback_info")}
    assert sorted(fallbacks) == ["jetson", "npu"]                           # the control is not listed
    for name, (_, device, preferred, reasons) in EXPECTED.items():
        assert (fallbacks[name]["device"], fallbacks[name]["preferred"]) == (device, preferred)
        assert all(r in fallbacks[name]["reason"] for r in reasons), fallbacks[name]


def test_telemetry_reports_the_fallback_and_its_reason(running):
    agent, peer = running
    loaded = messages(peer, "event", lambda b: b.get("event") == "model_loaded" and b["model"] == "plain")
    events = {b["model"]: b for b in loaded if b.get("event") == "model_loaded"}
    for name, (runtime, device, _, reasons) in EXPECTED.items():
        assert (events[name]["runtime"], events[name]["device"], events[name]["fallback"]) == (runtime, device, True)
        assert all(r in events[name]["fallback_reason"] for r in reasons), events[name]
    assert events["plain"]["fallback"] is False and events["plain"]["fallback_reason"] is None

    # A telemetry window lists a model version once it served requests in that window.
    x = {"inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}}
    for name in ("jetson", "npu", "plain"):
        assert httpx.post(f"{agent.url}/v1/models/{name}/infer", json=x, timeout=30).status_code == 200
    served: dict[str, dict] = {}

    def all_served(body: dict) -> bool:
        served.update({m["model"]: m for m in body["models"]})
        return {"jetson", "npu", "plain"} <= set(served)

    messages(peer, "telemetry", all_served)
    for name, (runtime, device, _, reasons) in EXPECTED.items():
        assert (served[name]["runtime"], served[name]["device"], served[name]["fallback"]) == (runtime, device, True)
        assert all(r in served[name]["fallback_reason"] for r in reasons), served[name]
    assert served["plain"]["fallback"] is False
