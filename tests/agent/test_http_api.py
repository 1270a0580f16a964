"""The local HTTP API against a real `edgeml-agent run` process, with a real client (httpx)."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import edgeml
from edgeml.bundle import SigningKey, TrustStore
from tests.agent.agent_process import AgentProcess, install, write_config
from tests.support.bundles import make_bundle
from tests.support.real_models import real_model
from tests.support.services import free_port
from tests.support.tiny_models import tiny_cnn, tiny_mlp

pytestmark = pytest.mark.slow
TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent")
    key = SigningKey.generate()
    (tmp / "builder.pub").write_bytes(key.public_pem())
    bundles = {
        "mlp": make_bundle(tmp, key, tiny_mlp(tmp / "mlp.onnx"), name="mlp"),
        "cnn": make_bundle(tmp, key, tiny_cnn(tmp / "cnn.onnx"), name="cnn"),
        "face": make_bundle(tmp, key, real_model("face-detection"), name="face", target="arm64-cpu"),
        "jetson": make_bundle(tmp, key, tiny_mlp(tmp / "j.onnx"), name="jetson", target="jetson-orin"),
    }
    port = free_port()
    config = write_config(tmp / "agent.toml", tmp / "data", tmp / "builder.pub", port, token=TOKEN,
                          extra="[runtime]\nallow_other_arch = true\nnum_threads = 1",
                          models={"mlp": {"max_batch_size": 8, "max_wait_ms": 2}})
    for b in bundles.values():
        assert "installed and current" in install(config, b)
    trust = TrustStore([key.public_key])
    local = {n: edgeml.load(tmp / "data/versions" / n / "1.0.0", trust) for n in ("mlp", "cnn")}
    return tmp, config, port, local


@pytest.fixture(scope="module")
def agent(setup):
    tmp, config, port, _ = setup
    with AgentProcess(config, port, tmp / "agent.log", TOKEN) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(agent):
    with httpx.Client(base_url=agent.url, headers=agent.headers, timeout=30) as c:
        yield c


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npz_bomb() -> bytes:
    """A few KB of compressed zeros that claim 400 MB once inflated."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_BZIP2) as zf, zf.open("x.npy", "w", force_zip64=True) as f:
        chunk = bytes(1 << 20)
        for _ in range(400):
            f.write(chunk)
    return buf.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def test_models_listing_shows_backend_device_fallback_and_the_model_that_cannot_run(client):
    data = client.get("/v1/models").json()
    by_name = {m["name"]: m for m in data["models"]}
    assert sorted(by_name) == ["cnn", "face", "mlp"]
    assert by_name["mlp"]["backend"] == "onnxruntime" and by_name["mlp"]["device"] == "CPUExecutionProvider"
    assert by_name["face"]["backend"] == "litert" and by_name["face"]["fallback"] is False
    assert by_name["mlp"]["batching"] == {"max_batch_size": 8, "max_wait_ms": 2.0}
    [failed] = data["failed"]
    assert failed["name"] == "jetson" and "not allowed by target profile 'jetson-orin'" in failed["error"]
    face = client.get("/v1/models/face").json()
    assert face["version"] == "1.0.0"
    assert face["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 128, 128, 3]}]
    assert [o["name"] for o in face["outputs"]] == ["regressors", "classificators"]


def test_json_named_bare_list_npy_and_npz_bodies_give_the_same_answer(client, setup):
    local = setup[3]["mlp"]
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    want = local.predict(x)["y"]
    named = client.post("/v1/models/mlp/infer", json={"inputs": {"x": x.tolist()}})
    bare = client.post("/v1/models/mlp/infer", json={"inputs": x.tolist()})
    as_npy = client.post("/v1/models/mlp/infer", content=npy(x), headers={"Content-Type": "application/x-npy"})
    as_npz = client.post("/v1/models/mlp/infer", content=npz(x=x),
                         headers={"Content-Type": "application/x-npz", "Accept": "application/x-npz"})
    for resp in (named, bare, as_npy):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["model"], body["version"]) == ("mlp", "1.0.0")
        np.testing.assert_allclose(np.array(body["outputs"]["y"], np.float32), want, rtol=1e-6)
    assert as_npz.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(as_npz.content)) as f:
        np.testing.assert_allclose(f["y"], want, rtol=1e-6)
    one = client.post("/v1/models/mlp/infer", content=npy(x), headers={"Content-Type": "application/x-npy",
                                                                       "Accept": "application/x-npy"})
    np.testing.assert_allclose(np.load(io.BytesIO(one.content)), want, rtol=1e-6)


def test_real_tflite_model_over_http(client):
    img = np.random.default_rng(1).random((1, 128, 128, 3), dtype=np.float32)
    resp = client.post("/v1/models/face/infer", content=npy(img),
                       headers={"Content-Type": "application/x-npy", "Accept": "application/x-npz"})
    assert resp.status_code == 200
    with np.load(io.BytesIO(resp.content)) as f:
        assert f["regressors"].shape == (1, 896, 16) and f["classificators"].shape == (1, 896, 1)
    two_outputs = client.post("/v1/models/face/infer", content=npy(img),
                              headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert two_outputs.status_code == 406 and "2 outputs" in two_outputs.json()["error"]


BAD_INPUTS = [
    # (case, model, body, content type, status, message fragment)
    ("wrong dtype (strings)", "mlp", json.dumps({"inputs": {"x": [["a", "b", "c", "d"]]}}), "application/json",
     400, "input 'x' must hold numbers"),
    ("wrong dtype (complex npy)", "mlp", npy(np.ones((1, 4), np.complex64)), "application/x-npy",
     400, "input 'x' has dtype complex64; the model wants float32"),
    ("wrong shape", "mlp", json.dumps({"inputs": {"x": [[1, 2, 3]]}}), "application/json",
     400, "input 'x' has shape [1, 3]; the model wants ['N', 4]"),
    ("wrong fixed shape", "cnn", npy(np.ones((1, 3, 8, 8), np.float32)), "application/x-npy",
     400, "input 'input' has shape [1, 3, 8, 8]; the model wants [1, 3, 16, 16]"),
    ("ragged rows", "mlp", json.dumps({"inputs": [[1, 2, 3, 4], [1]]}), "application/json",
     400, "not a rectangular array"),
    ("missing input", "mlp", npz(z=np.ones((1, 4), np.float32)), "application/x-npz",
     400, "missing input(s) x; unknown input(s) z"),
    ("no inputs key", "mlp", json.dumps({"x": [[1, 2, 3, 4]]}), "application/json", 400, "needs an 'inputs' key"),
    ("empty body", "mlp", b"", "application/json", 400, "body is empty"),
    ("garbage json", "mlp", b"\x00\xff{not json", "application/json", 400, "not valid JSON"),
    ("garbage npy", "mlp", b"\x93NUMPY garbage bytes", "application/x-npy", 400, "not a valid .npy"),
    ("garbage npz", "mlp", b"PK\x03\x04 garbage", "application/x-npz", 400, "not a valid .npz"),
    ("pickled object npy", "mlp", npy(np.array([{"a": 1}], dtype=object)), "application/x-npy", 400,
     "not a valid .npy"),
    ("npy sent as npz", "mlp", npy(np.ones((1, 4), np.float32)), "application/x-npz", 400, "not a valid .npz"),
    ("npz bomb", "mlp", None, "application/x-npz", 413, "expands to"),
    ("unsupported type", "mlp", b"x", "text/csv", 415, "unsupported Content-Type 'text/csv'"),
    ("unknown model", "nope", json.dumps({"inputs": [[1, 2, 3, 4]]}), "application/json", 404,
     "model 'nope' is not loaded (loaded: cnn, face, mlp)"),
    ("oversized body", "mlp", b"0" * 300_000, "application/x-npy", 413, "at most 262144 (server.max_body_bytes)"),
]


@pytest.mark.parametrize(("case", "model", "body", "ctype", "status", "message"), BAD_INPUTS,
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_4xx_naming_the_problem_and_the_agent_keeps_serving(
        agent, case, model, body, ctype, status, message):
    if body is None:
        body = npz_bomb()
    with httpx.Client(base_url=agent.url, headers=agent.headers, timeout=30) as c:   # fresh: 413 closes it
        resp = c.post(f"/v1/models/{model}/infer", content=body, headers={"Content-Type": ctype})
        assert resp.status_code == status, resp.text
        assert message in resp.json()["error"]
    with httpx.Client(base_url=agent.url, headers=agent.headers, timeout=30) as c:
        ok = c.post("/v1/models/mlp/infer", json={"inputs": [[1, 2, 3, 4]]})
        assert ok.status_code == 200 and c.get("/healthz").json()["status"] == "ok"


def test_routes_methods_and_auth(agent, client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/models/mlp/infer").status_code == 405
    with httpx.Client(base_url=agent.url, timeout=10) as anon:
        assert anon.get("/healthz").status_code == 200                      # health is open
        for path in ("/v1/models", "/metrics", "/v1/models/mlp"):
            resp = anon.get(path)
            assert resp.status_code == 401 and "Authorization: Bearer" in resp.json()["error"]
        wrong = anon.post("/v1/models/mlp/infer", json={"inputs": [[1, 2, 3, 4]]},
                          headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
        assert wrong.status_code == 401


def test_32_concurrent_clients_all_get_their_own_correct_answers(agent, setup):
    local = setup[3]
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(i: int) -> int:
        rng = np.random.default_rng(100 + i)
        done = 0
        with httpx.Client(base_url=agent.url, headers=agent.headers, timeout=60) as c:
            for j in range(6):
                name = "mlp" if (i + j) % 2 else "cnn"
                x = rng.random((1, 4) if name == "mlp" else (1, 3, 16, 16), dtype=np.float32)
                resp = c.post(f"/v1/models/{name}/infer", content=npy(x),
                              headers={"Content-Type": "application/x-npy", "Accept": "application/x-npz"})
                want = local[name].predict(x)
                with np.load(io.BytesIO(resp.content)) as f:
                    got = {k: f[k] for k in f.files}
                if resp.status_code != 200 or not all(np.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want):
                    with lock:
                        errors.append(f"client {i} request {j}: {resp.status_code}")
                done += 1
        return done

    with ThreadPoolExecutor(32) as pool:
        counts = list(pool.map(client_loop, range(32)))
    assert errors == [] and sum(counts) == 32 * 6


def test_metrics_count_requests_errors_and_latency_per_model_version(client):
    client.post("/v1/models/cnn/infer", json={"inputs": [[1]]})           # one more error for cnn
    text = client.get("/metrics").text
    assert "# TYPE edgeml_request_duration_seconds histogram" in text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert int(lines['edgeml_requests_total{model="mlp",version="1.0.0",code="200"}']) >= 32 * 3
    # a client's mistake is counted apart from the model's errors (it must not move a rollout gate)
    assert int(lines['edgeml_requests_rejected_total{model="cnn",version="1.0.0",reason="bad_input"}']) >= 1
    assert not any(k.startswith("edgeml_request_errors_total") for k in lines)
    count = int(lines['edgeml_request_duration_seconds_count{model="mlp",version="1.0.0"}'])
    assert int(lines['edgeml_request_duration_seconds_bucket{model="mlp",version="1.0.0",le="+Inf"}']) == count
    assert 'edgeml_model_info{model="face",version="1.0.0",runtime="litert",device="CPU",fallback="false"} 1' in text
    rows = int(lines['edgeml_batch_rows_total{model="mlp",version="1.0.0"}'])
    batches = int(lines['edgeml_batches_total{model="mlp",version="1.0.0"}'])
    assert rows >= 32 * 3 and 0 < batches <= rows             # the batched model really ran through its batcher


def test_status_command_sees_installed_models_and_the_running_daemon(setup, agent):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edgeml_agent.cli", "status", "--config", str(setup[1]), "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout)
    assert report["models"]["mlp"] == {"current": "1.0.0", "versions": ["1.0.0"]}
    assert report["daemon"]["status"] == "ok" and report["daemon"]["failed"] == ["jetson"]
    assert "CPUExecutionProvider" in report["host"]["devices"]["onnxruntime"]


def _raw(agent, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection; read until the agent closes it."""
    import socket

    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_malformed_requests_get_a_400_and_a_closed_connection(agent):
    assert _raw(agent, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert b"malformed HTTP header line" in _raw(agent, b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n")
    too_many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"
    assert _raw(agent, too_many).startswith(b"HTTP/1.1 431 ")
    chunked = b"POST /v1/models/mlp/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert _raw(agent, chunked).startswith(b"HTTP/1.1 401 ")   # auth comes first ...
    authed = chunked.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    assert _raw(agent, authed).startswith(b"HTTP/1.1 411 ")    # ... then the body framing


def test_http10_closes_and_expect_100_continue_is_answered(agent):
    resp = _raw(agent, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in resp
    body = b'{"inputs": [[1, 2, 3, 4]]}'
    req = (b"POST /v1/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Expect: 100-continue\r\nConnection: close\r\n" + f"Authorization: Bearer {TOKEN}\r\n".encode()
           + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    resp = _raw(agent, req)
    assert resp.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert b"Server-Timing: model;dur=" in resp and b'"outputs"' in resp
