"""Limits where input enters (issue 15, findings 4 and 5): real fleet and agent processes, real HTTP.

Fleet (SQLite and PostgreSQL): a device's 50 MB heartbeat is refused and nothing of it is stored; a bundle
upload over ``--max-bundle-bytes`` is cut off while it streams and leaves no partial file; lone surrogates,
too-deep and non-finite JSON are 422 (they were 500s, and a stored one made every device listing a 500).
Agent: a 100k-deep JSON body is a 400, and client errors never count as the model's errors; an answer
holding NaN is valid JSON.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgeml.bundle import SigningKey
from edgeml.fleet.bootstrap import create_first_admin
from tests.agent.agent_process import AgentProcess, install, write_config
from tests.fleet.server_process import ServerProcess, fleet_server
from tests.support.bundles import make_bundle
from tests.support.postgres import temporary_database
from tests.support.services import free_port
from tests.support.tiny_models import tiny_mlp

pytestmark = pytest.mark.slow
BUNDLE_CAP = 1 << 20          # the server under test runs with --max-bundle-bytes 1 MiB
JSON_CAP = 64 << 10           # the fleet's limit for every other body
TOKEN = "limits-token-0123456789"


@dataclass
class LiveFleet:
    server: ServerProcess
    http: httpx.Client
    data_dir: Path
    admin: dict[str, str]
    device: dict[str, str]
    device_id: str
    key: SigningKey
    tmp: Path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFleet]:
    tmp = tmp_path_factory.mktemp(f"fleet-{request.param}")
    data_dir = tmp / "data"
    data_dir.mkdir()
    with ExitStack() as stack:
        db = (f"sqlite:///{data_dir / 'fleet.db'}" if request.param == "sqlite"
              else stack.enter_context(temporary_database()))
        admin = bearer(create_first_admin(db))
        server = stack.enter_context(fleet_server(data_dir, db=db, extra_args=["--max-bundle-bytes", str(BUNDLE_CAP)]))
        http = stack.enter_context(httpx.Client(base_url=server.url, timeout=120))
        enroll = http.post("/v1/enrollment-tokens", headers=admin, json={}).json()["token"]
        device = http.post("/v1/enroll", headers=bearer(enroll), json={"name": "cam-1", "hardware": {"arch": "x86_64"}})
        assert device.status_code == 201, device.text
        key = SigningKey.generate()
        r = http.post("/v1/keys", headers=admin, json={"name": "ci", "public_pem": key.public_pem().decode()})
        assert r.status_code == 201, r.text
        yield LiveFleet(server, http, data_dir, admin, bearer(device.json()["api_token"]), device.json()["device_id"],
                        key, tmp)


def device_list(live: LiveFleet) -> httpx.Response:
    r = live.http.get("/v1/devices", headers=live.admin)
    assert r.status_code == 200, r.text      # the listing every viewer loads keeps working
    return r


def hardware(live: LiveFleet) -> dict:
    [device] = [d for d in device_list(live).json() if d["id"] == live.device_id]
    return dict(device["hardware"])


def test_a_50mb_heartbeat_is_refused_and_nothing_of_it_is_stored(live: LiveFleet) -> None:
    # given a device whose heartbeat is known
    ok = live.http.post("/v1/device/heartbeat", headers=live.device, json={"hardware": {"arch": "x86_64", "ram": 1}})
    assert ok.status_code == 200, ok.text
    blob = json.dumps({"hardware": {"blob": "a" * (50 << 20)}}).encode()

    # when it posts 50 MB, with a Content-Length and then chunked (no length announced)
    declared = live.http.post("/v1/device/heartbeat", headers={**live.device, "Content-Type": "application/json"},
                              content=blob)
    chunked = live.http.post("/v1/device/heartbeat", headers={**live.device, "Content-Type": "application/json"},
                             content=(blob[i:i + (1 << 20)] for i in range(0, len(blob), 1 << 20)))

    # then both are 413 naming the limit, nothing was stored, and the device list stays small
    for r in (declared, chunked):
        assert r.status_code == 413, r.text[:200]
        assert f"over the {JSON_CAP}-byte limit for POST /v1/device/heartbeat" in r.json()["detail"]
    assert hardware(live) == {"arch": "x86_64", "ram": 1}
    assert len(device_list(live).content) < 4096


def test_an_oversize_bundle_upload_is_cut_off_while_streaming_and_leaves_no_file(live: LiveFleet) -> None:
    sent = 0

    def endless() -> Iterator[bytes]:   # 64 MiB offered, 256 KiB at a time, no Content-Length
        nonlocal sent
        for _ in range(256):
            sent += 256 << 10
            yield bytes(256 << 10)

    # when a deployer streams 64 times the cap
    r = live.http.post("/v1/bundles", headers={**live.admin, "Content-Type": "application/octet-stream"},
                       content=endless())

    # then the server answers 413 with what to do, stopped reading long before the end, and kept nothing
    assert r.status_code == 413, r.text[:300]
    assert f"over the {BUNDLE_CAP}-byte limit" in r.json()["detail"] and "--max-bundle-bytes" in r.json()["detail"]
    assert sent < 32 << 20
    assert list((live.data_dir / "artifacts" / "tmp").iterdir()) == []
    # an announced length over the cap is refused before a byte of the body is read
    declared = live.http.post("/v1/bundles", headers=live.admin, content=bytes(BUNDLE_CAP + 1))
    assert declared.status_code == 413 and "--max-bundle-bytes" in declared.json()["detail"]
    # and a real bundle under the cap still goes in
    bundle = make_bundle(live.tmp / f"ok-{live.server.port}.edgepkg", live.key, tiny_mlp(live.tmp / "mlp.onnx"))
    assert bundle.stat().st_size < BUNDLE_CAP
    ok = live.http.post("/v1/bundles", headers=live.admin, content=bundle.read_bytes())
    assert ok.status_code in (200, 201), ok.text
    assert [b["name"] for b in live.http.get("/v1/bundles", headers=live.admin).json()] == ["m"]


SURROGATE_CASES = [
    ("POST", "/v1/tokens", "admin", b'{"name": "\\ud800", "role": "viewer"}', ["body", "name"]),
    ("PATCH", "/v1/devices/{device}", "admin", b'{"name": "cam \\udc00"}', ["body", "name"]),
    ("POST", "/v1/device/heartbeat", "device", b'{"hardware": {"os": "\\ud800x"}}', ["body", "hardware", "os"]),
    ("POST", "/v1/enrollment-tokens", "admin", b'{"tags": ["\\udfff"]}', ["body", "tags", 0]),
]


@pytest.mark.parametrize(("method", "path", "who", "body", "loc"), SURROGATE_CASES,
                         ids=[f"{c[0]} {c[1]}" for c in SURROGATE_CASES])
def test_a_lone_surrogate_is_a_422_naming_the_field(live: LiveFleet, method: str, path: str, who: str, body: bytes,
                                                    loc: list) -> None:
    headers = {**(live.admin if who == "admin" else live.device), "Content-Type": "application/json"}
    r = live.http.request(method, path.format(device=live.device_id), headers=headers, content=body)
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == loc and problem["type"] == "string_unicode" and "send valid Unicode" in problem["msg"]
    device_list(live)


def test_valid_non_ascii_text_is_kept(live: LiveFleet) -> None:
    # a surrogate *pair* is one valid character (U+1F600): not refused
    r = live.http.post("/v1/tokens", headers={**live.admin, "Content-Type": "application/json"},
                       content=b'{"name": "cam\\u00e9ra \\ud83d\\ude00", "role": "viewer"}')
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "caméra \U0001F600"


def nested(levels: int) -> bytes:
    return b'{"hardware": ' + b'{"a": ' * levels + b"1" + b"}" * levels + b"}"


@pytest.mark.parametrize("levels", [33, 900])
def test_too_deep_json_is_a_422_and_nothing_is_stored(live: LiveFleet, levels: int) -> None:
    # 900 levels parse, and were stored: every device listing was a 500 from then on
    before = hardware(live)
    body = nested(levels)
    r = live.http.post("/v1/device/heartbeat", headers={**live.device, "Content-Type": "application/json"},
                       content=body)
    assert r.status_code == 422, r.text[:300]
    [problem] = r.json()["detail"]
    assert problem["type"] == "json_too_deep" and "nested deeper than 32 levels" in problem["msg"]
    assert hardware(live) == before


@pytest.mark.parametrize("body", [b'{"hardware": {"temp": NaN}}', b'{"hardware": {"temp": -Infinity}}',
                                  b'{"hardware": {"temp": 1e999}}', b"[" * 20_000 + b"]" * 20_000],
                         ids=["NaN", "-Infinity", "1e999", "20k deep"])
def test_non_finite_or_unparseably_deep_json_is_a_4xx_and_the_list_keeps_working(live: LiveFleet,
                                                                                   body: bytes) -> None:
    before = hardware(live)
    r = live.http.post("/v1/device/heartbeat", headers={**live.device, "Content-Type": "application/json"},
                       content=body)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["detail"][0]["type"] in ("json_not_finite", "json_too_deep")
    assert hardware(live) == before


def test_a_200k_deep_array_anywhere_is_a_4xx(live: LiveFleet) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    for path in ("/v1/tokens", "/v1/rollouts", "/v1/keys"):
        r = live.http.post(path, headers={**live.admin, "Content-Type": "application/json"}, content=deep)
        assert r.status_code == 413, r.text[:300]


# -- the agent ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("agent")
    key = SigningKey.generate()
    (tmp / "builder.pub").write_bytes(key.public_pem())
    port = free_port()
    config = write_config(tmp / "agent.toml", tmp / "data", tmp / "builder.pub", port, token=TOKEN)
    assert "installed and current" in install(config, make_bundle(tmp, key, tiny_mlp(tmp / "mlp.onnx"), name="mlp"))
    with AgentProcess(config, port, tmp / "agent.log", TOKEN) as proc:
        yield proc


def metric_lines(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")}


CLIENT_MISTAKES = [
    ("100k-deep JSON", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ("70 dimensions", json.dumps({"inputs": json.loads("[" * 70 + "1" + "]" * 70)}).encode(), "at most 64 dimensions"),
    ("a 5000-digit number", b'{"inputs": [[' + b"9" * 5000 + b", 1, 2, 3]]}", "not valid JSON"),
    ("a 100k-character input name", json.dumps({"inputs": {"x" * 100_000: [[1, 2, 3, 4]]}}).encode(),
     "at most 256 are accepted"),
    ("a wrong shape", json.dumps({"inputs": [[1, 2, 3]]}).encode(), "the model wants"),
]


def test_client_mistakes_are_4xx_and_never_count_as_the_models_errors(agent: AgentProcess) -> None:
    with httpx.Client(base_url=agent.url, headers=agent.headers, timeout=60) as client:
        # given a model that has served a few requests
        for _ in range(3):
            assert client.post("/v1/models/mlp/infer", json={"inputs": [[1, 2, 3, 4]]}).status_code == 200
        before = metric_lines(client)
        # when clients send what no model can run
        for case, body, message in CLIENT_MISTAKES:
            r = client.post("/v1/models/mlp/infer", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, f"{case}: {r.status_code} {r.text[:300]}"
            assert message in r.json()["error"], case
            assert len(r.content) < 2048, case          # nothing of the request echoed back whole
        after = metric_lines(client)
        # then the model's requests and errors are untouched, and the mistakes are counted apart by reason
        model = 'model="mlp",version="1.0.0"'
        ok = f'edgeml_requests_total{{{model},code="200"}}'
        assert after[ok] == before[ok]
        assert not [k for k in after if k.startswith(("edgeml_request_errors_total", "edgeml_requests_total"))
                    and 'code="200"' not in k]
        rejected = f'edgeml_requests_rejected_total{{{model},reason="bad_input"}}'
        assert after[rejected] - before.get(rejected, 0) == len(CLIENT_MISTAKES)
        assert after['edgeml_http_responses_total{code="400"}'] >= len(CLIENT_MISTAKES)
        # and the model goes on serving
        assert client.post("/v1/models/mlp/infer", json={"inputs": [[1, 2, 3, 4]]}).status_code == 200


def _refuse(token: str) -> None:
    raise AssertionError(f"the answer holds {token}, which is not JSON")


def test_an_answer_holding_nan_or_infinity_is_valid_json(agent: AgentProcess) -> None:
    x = np.array([[np.nan, 1, 2, 3], [3e38, -3e38, 3e38, -3e38], [1, 2, 3, 4]], np.float32)
    buf = io.BytesIO()
    np.save(buf, x)
    with httpx.Client(base_url=agent.url, headers=agent.headers, timeout=60) as client:
        exact = client.post("/v1/models/mlp/infer", content=buf.getvalue(),
                            headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
        as_json = client.post("/v1/models/mlp/infer", content=buf.getvalue(),
                              headers={"Content-Type": "application/x-npy"})
    want = np.load(io.BytesIO(exact.content))
    assert not np.isfinite(want).all()                   # the model really answers NaN/Infinity here
    assert as_json.status_code == 200
    got = json.loads(as_json.text, parse_constant=_refuse)["outputs"]["y"]
    assert [[v is None for v in row] for row in got] == (~np.isfinite(want)).tolist()
    np.testing.assert_allclose(np.array(got[2], np.float32), want[2], rtol=1e-6)
