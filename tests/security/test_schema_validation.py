"""Issue 15, finding 5 (manifest and desired-state parts): malformed but *signed* documents are refused
with one clear error naming the JSON path(s) and what was expected — never a 5xx, a traceback, or a value
stored in the wrong type.

Every document here carries a valid signature by a trusted key, so only the schema (and the bounded
parser in front of it) can refuse it. Bundles are written by hand: ``pack_bundle`` itself refuses
malformed manifests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from edgeml.bundle import SigningKey, TrustStore, verify_bundle
from edgeml.bundle.pack import signature_document
from edgeml.desired import parse_desired, sign_desired
from edgeml.errors import DesiredStateError, ManifestError, UnsupportedFormatError
from edgeml.fleet.cli import main as fleet_cli
from tests.fleet.conftest import Fleet, make_fleet
from tests.fleet.server_process import fleet_server
from tests.support.postgres import temporary_database
from tests.updates.test_machine_inprocess import Rig

MODEL = b"not really onnx: verification never loads it"
DEEP = 200_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet server in-process (the API over TestClient) on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield from make_fleet(tmp_path / "data", f"sqlite:///{tmp_path / 'fleet.db'}")
    else:
        with temporary_database() as url:
            yield from make_fleet(tmp_path / "data", url)


def _manifest(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": 1, "name": "det", "version": "1.0.0", "created": "2026-11-30T00:00:00+00:00",
        "target": {"id": "x86-cpu"}, "runtime": "onnxruntime", "precision": "fp32", "model": "model.onnx",
        "files": [{"path": "model.onnx", "size": len(MODEL), "sha256": hashlib.sha256(MODEL).hexdigest()}],
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 2]}],
    }
    doc.update(changes)
    return doc


def _deep_manifest() -> bytes:
    """A manifest whose `fidelity` is an array nested 200,000 levels deep (600 KB)."""
    head = json.dumps(_manifest())[:-1].encode()
    return head + b', "fidelity": ' + b"[" * DEEP + b"]" * DEEP + b"}"


def _bundle(path: Path, key: SigningKey, manifest: dict[str, Any] | bytes) -> Path:
    """A bundle signed by ``key`` whose manifest.json holds exactly ``manifest`` (bytes as given)."""
    data = manifest if isinstance(manifest, bytes) else json.dumps(manifest, sort_keys=True).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in (("manifest.json", data), ("manifest.sig", signature_document(key, data)),
                           ("model.onnx", MODEL)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return path


# -- what each malformed manifest is refused with ------------------------------------------------------

TYPES = {"name": ("string", 7), "version": ("string", 100), "created": ("string", None),
         "target": ("object", "x86-cpu"), "runtime": ("string", ["onnxruntime"]), "precision": ("string", 16),
         "model": ("string", {"path": "model.onnx"}), "files": ("array", {"model.onnx": 1}),
         "inputs": ("array", None), "outputs": ("array", "y")}

MALFORMED: list[tuple[str, Callable[[], dict[str, Any] | bytes], str]] = [
    ("inputs null", lambda: _manifest(inputs=None), r"\$\.inputs: expected array, got null"),
    ("name is an object", lambda: _manifest(name={"a": 1}), r"\$\.name: expected string, got an object"),
    ("200k-deep array", _deep_manifest, "nests arrays/objects more than 64 levels deep"),
    ("tensor dims null", lambda: _manifest(inputs=[{"name": "x", "dtype": "float32", "shape": [None]}]),
     r"\$\.inputs\[0\]\.shape\[0\]: expected integer or string, got null"),
    ("file size a string", lambda: _manifest(files=[{**_manifest()["files"][0], "size": "7"}]),
     r"\$\.files\[0\]\.size: expected integer, got string \"7\""),
    ("version longer than the registry holds", lambda: _manifest(version="1.0.0-" + "a" * 70),
     r"\$\.version: expected at most 64 characters, got 76"),
    ("lone surrogate in the name", lambda: json.dumps(_manifest(name="\ud800")).encode(),
     r"lone UTF-16 surrogate \(\\ud800\)"),
    ("NUL in the name", lambda: _manifest(name="det\x00"), r"NUL character"),
    ("NaN in the fidelity report", lambda: json.dumps(_manifest(fidelity={"cosine": float("nan")})).encode(),
     "NaN is not a JSON number"),
    ("1e400 overflows to infinity", lambda: json.dumps(_manifest()).encode()[:-1] + b', "size_hint": 1e400}',
     "1e400 is too large"),
]


@pytest.mark.parametrize(("make", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_signed_manifest_is_refused_naming_the_path(make: Callable[[], Any], message: str,
                                                                 tmp_path: Path, signing_key: SigningKey,
                                                                 trust: TrustStore) -> None:
    bundle = _bundle(tmp_path / "bad.edgepkg", signing_key, make())
    with pytest.raises(ManifestError, match=message):
        verify_bundle(bundle, trust)


@pytest.mark.parametrize("field", sorted(TYPES))
def test_every_required_field_of_the_wrong_type_is_refused(field: str, tmp_path: Path, signing_key: SigningKey,
                                                           trust: TrustStore) -> None:
    expected, wrong = TYPES[field]
    bundle = _bundle(tmp_path / "bad.edgepkg", signing_key, _manifest(**{field: wrong}))
    with pytest.raises(ManifestError, match=rf"schema: .*\$\.{field}: expected {expected}, got "):
        verify_bundle(bundle, trust)


@pytest.mark.parametrize("field", sorted(TYPES))
def test_every_required_field_missing_is_named(field: str, tmp_path: Path, signing_key: SigningKey,
                                               trust: TrustStore) -> None:
    doc = _manifest()
    del doc[field]
    bundle = _bundle(tmp_path / "bad.edgepkg", signing_key, doc)
    with pytest.raises(ManifestError, match=rf"\$: missing required key\(s\) '{field}'"):
        verify_bundle(bundle, trust)


def test_several_problems_are_reported_together(tmp_path: Path, signing_key: SigningKey,
                                                trust: TrustStore) -> None:
    bundle = _bundle(tmp_path / "bad.edgepkg", signing_key, _manifest(inputs=None, name=[], precision=1))
    with pytest.raises(ManifestError) as refused:
        verify_bundle(bundle, trust)
    assert str(refused.value) == (
        "manifest.json does not match the format 1 schema: $.inputs: expected array, got null; "
        "$.name: expected string, got an array; $.precision: expected string, got integer 1")


@pytest.mark.parametrize("fmt", [2, "1", None])
def test_an_unknown_format_version_is_refused_as_such(fmt: Any, tmp_path: Path, signing_key: SigningKey,
                                                      trust: TrustStore) -> None:
    bundle = _bundle(tmp_path / "future.edgepkg", signing_key, _manifest(format=fmt, inputs=None))
    with pytest.raises(UnsupportedFormatError, match=f"bundle format {fmt!r} is not supported"):
        verify_bundle(bundle, trust)


def test_unknown_keys_are_kept_for_forward_compatibility(tmp_path: Path, signing_key: SigningKey,
                                                         trust: TrustStore) -> None:
    # format 1 readers ignore keys they do not know (docs/bundle-format.md), at the top and inside entries
    doc = _manifest(signed_sbom={"spdx": "2.3"}, target={"id": "x86-cpu", "npu": "none"})
    doc["inputs"][0]["layout"] = "NC"
    verified = verify_bundle(_bundle(tmp_path / "newer.edgepkg", signing_key, doc), trust)
    assert verified.manifest.raw["signed_sbom"] == {"spdx": "2.3"}
    assert verified.manifest.raw["inputs"][0]["layout"] == "NC" and verified.manifest.target_id == "x86-cpu"


# -- the same documents through the programs people run ------------------------------------------------

CLI_CASES = [m for m in MALFORMED if m[0] in ("inputs null", "name is an object", "200k-deep array")]


@pytest.mark.parametrize(("make", "message"), [m[1:] for m in CLI_CASES], ids=[m[0] for m in CLI_CASES])
def test_edgeml_verify_prints_one_line_and_fails(make: Callable[[], Any], message: str, tmp_path: Path,
                                                 signing_key: SigningKey) -> None:
    bundle = _bundle(tmp_path / "bad.edgepkg", signing_key, make())
    (tmp_path / "ci.pub").write_bytes(signing_key.public_pem())
    command = [sys.executable, "-m", "edgeml.cli", "verify", str(bundle), "--trust", str(tmp_path / "ci.pub")]
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert run.returncode == 3, run.stderr                   # EXIT_VERIFY: the bundle cannot be trusted
    assert "Traceback" not in run.stderr and run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert re.search(message, lines[0]), lines[0]


UPLOAD_CASES = [m for m in MALFORMED if m[0] in (
    "inputs null", "name is an object", "200k-deep array", "version longer than the registry holds",
    "lone surrogate in the name", "NUL in the name", "NaN in the fidelity report")]


@pytest.mark.parametrize(("make", "message"), [m[1:] for m in UPLOAD_CASES], ids=[m[0] for m in UPLOAD_CASES])
def test_fleet_upload_answers_400_with_the_path(make: Callable[[], Any], message: str, tmp_path: Path,
                                                fleet: Fleet, signing_key: SigningKey) -> None:
    # given a fleet that trusts the key the malformed manifest is signed with
    fleet.trust(signing_key)
    bundle = _bundle(tmp_path / "bad.edgepkg", signing_key, make())
    # when a deployer pushes it
    r = fleet.call("POST", "/v1/bundles", content=bundle.read_bytes(),
                   headers={"Content-Type": "application/octet-stream"})
    # then it is refused as the client's mistake, with the reason, and nothing is stored
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("bundle refused: ")
    assert re.search(message, r.json()["detail"]), r.json()["detail"]
    assert fleet.call("GET", "/v1/bundles").json() == []
    # and a well-formed bundle is still accepted afterwards
    good = fleet.call("POST", "/v1/bundles", content=_bundle(tmp_path / "ok.edgepkg", signing_key,
                                                             _manifest()).read_bytes())
    assert good.status_code == 201, good.text
    assert fleet.call("GET", "/v1/bundles/det@1.0.0").json()["manifest"]["name"] == "det"


def _fleet_cli(*args: str) -> Result:
    """The edgeml-fleet command in-process; an exception escaping it fails the test (no traceback hidden)."""
    return CliRunner().invoke(fleet_cli, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_edgeml_fleet_bundles_push_to_a_real_server_gets_the_reason(tmp_path: Path, signing_key: SigningKey) -> None:
    # given a real `edgeml-fleet serve` process that trusts the key
    data = tmp_path / "fleet"
    admin = _fleet_cli("admin", "init", "--data-dir", str(data)).stdout.strip()
    (tmp_path / "ci.pub").write_bytes(signing_key.public_pem())
    with fleet_server(data) as server:
        assert _fleet_cli("login", server.url, "--token", admin).exit_code == 0
        assert _fleet_cli("keys", "trust", str(tmp_path / "ci.pub")).exit_code == 0
        for name, make, message in CLI_CASES:
            # when a signed malformed bundle is pushed
            run = _fleet_cli("bundles", "push", str(_bundle(tmp_path / f"{len(name)}.edgepkg", signing_key, make())))
            # then the command fails with the server's reason on one line, and the server stays well
            assert run.exit_code != 0 and run.stdout == "", run.output
            lines = run.stderr.splitlines()
            assert len(lines) == 1 and "refused (400): bundle refused: " in lines[0], run.stderr
            assert re.search(message, lines[0]), lines[0]
        good = _fleet_cli("bundles", "push", str(_bundle(tmp_path / "ok.edgepkg", signing_key, _manifest())))
        assert good.exit_code == 0 and "pushed det@1.0.0" in good.stdout, good.output
    assert "Traceback" not in server.log.read_text()


# -- desired states: signed with the trusted key, so only the schema can refuse them ------------------

NOW = 1_800_000_000.0
SHA = "ab" * 32


def _desired(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": 1, "device": "cam-7", "issued": NOW - 10, "expires": NOW + 3600, "serial": 12,
        "models": [{"name": "det", "version": "2.1.0", "sha256": SHA, "size": 4096, "url": "/v1/bundles/x/download"}],
        "probation": {"seconds": 30, "max_error_rate": 0.05}, "rollout": "r-1",
    }
    doc.update(changes)
    return doc


def _model(**changes: Any) -> dict[str, Any]:
    return {**_desired()["models"][0], **changes}


def _signed(key: SigningKey, payload: dict[str, Any] | bytes, **outer: Any) -> bytes:
    """The wire document for ``payload`` exactly as given (sign_desired would rewrite it canonically)."""
    text = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return json.dumps({"payload": text.decode("utf-8", "surrogatepass"), "key_id": key.key_id,
                       "signature": base64.b64encode(key.sign(text)).decode(), **outer}).encode()


DESIRED_MALFORMED: list[tuple[str, Callable[[], dict[str, Any] | bytes], str]] = [
    ("serial null", lambda: _desired(serial=None), r"\$\.serial: expected integer, got null"),
    ("models null", lambda: _desired(models=None), r"\$\.models: expected array, got null"),
    ("device an object", lambda: _desired(device={"id": "cam-7"}), r"\$\.device: expected string, got an object"),
    ("size a string", lambda: _desired(models=[_model(size="big")]),
     r"\$\.models\[0\]\.size: expected integer, got string \"big\""),
    ("rollback a string", lambda: _desired(models=[_model(rollback="no")]),
     r"\$\.models\[0\]\.rollback: expected boolean, got string \"no\""),
    ("sha256 not a digest", lambda: _desired(models=[_model(sha256="../../etc/passwd")]),
     r"\$\.models\[0\]\.sha256: expected a string matching"),
    ("probation gate a string", lambda: _desired(probation={"min_shadow_agreement": "high"}),
     r"\$\.probation\.min_shadow_agreement: expected number, got string"),
    ("serial past 64 bits", lambda: _desired(serial=10**30), r"\$\.serial: expected a number <= 9223372036854775807"),
    ("payload an array", lambda: b"[1, 2]", r"\$: expected object, got an array"),
    ("payload 200k deep", lambda: json.dumps(_desired()).encode()[:-1] + b', "x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
     "payload is refused: .*more than 16 levels deep"),
    ("expires NaN", lambda: json.dumps(_desired(expires=float("nan"))).encode(), "NaN is not a JSON number"),
    ("expires 1e400", lambda: json.dumps(_desired()).encode().replace(b'"expires": 1800003600.0', b'"expires": 1e400'),
     "1e400 is too large"),
]


@pytest.mark.parametrize(("make", "message"), [m[1:] for m in DESIRED_MALFORMED],
                         ids=[m[0] for m in DESIRED_MALFORMED])
def test_a_malformed_signed_desired_state_is_refused_naming_the_path(make: Callable[[], Any], message: str,
                                                                     signing_key: SigningKey,
                                                                     trust: TrustStore) -> None:
    wire = _signed(signing_key, make())
    with pytest.raises(DesiredStateError, match=message):
        parse_desired(wire, trust, device_id="cam-7", now=NOW)


@pytest.mark.parametrize(("wire", "message"), [
    (b"[" * DEEP + b"]" * DEEP, "malformed .*more than 16 levels deep"),
    (b'{"payload": {"schema": 1}, "key_id": "k", "signature": ""}', r"malformed \(\$\.payload: expected string"),
    (b'{"payload": "{}", "key_id": ["k"], "signature": ""}', r"malformed \(\$\.key_id: expected string"),
    (b'{"payload": "{}", "key_id": "k", "signature": "\\ud800"}', "malformed .*lone UTF-16 surrogate"),
])
def test_a_malformed_wire_wrapper_is_refused_as_malformed(wire: bytes, message: str, trust: TrustStore) -> None:
    with pytest.raises(DesiredStateError, match=message):
        parse_desired(wire, trust, device_id="cam-7", now=NOW)


def test_the_fleets_own_documents_still_parse(signing_key: SigningKey, trust: TrustStore) -> None:
    # what the fleet signs (edgeml/fleet/rollouts/desired_docs.py), with unknown keys a newer fleet may add
    wire = sign_desired({**_desired(models=[_model(rollback=True)], rollout=None, probation={}),
                         "hint": {"wave": 2}}, signing_key)
    state = parse_desired(wire, trust, device_id="cam-7", now=NOW)
    assert state.models[0].rollback is True and state.rollout is None and state.serial == 12


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _refused_with(rig: Rig, reason: str) -> bool:
    return reason in str(rig.updates.last_refusal)


@pytest.mark.slow
def test_a_real_agent_refuses_malformed_desired_states_and_keeps_serving_and_updating(
        tmp_path: Path, signing_key: SigningKey) -> None:
    # given a real agent (in-process: HTTP API, update worker) serving m@1.0.0 under live traffic
    rig = Rig(tmp_path, signing_key, SigningKey.generate(), targets=("x86-cpu",))
    try:
        rig.traffic()
        # when malformed documents arrive: two need no key at all, one is signed by the fleet
        for wire, reason in [
            (b'{"payload": "{}", "key_id": "k", "signature": "\\ud800"}', "lone UTF-16 surrogate"),
            (b"[" * DEEP + b"]" * DEEP, "more than 16 levels deep"),
            (_signed(rig.fleet_key, b"[1, 2]"), "misses or mistypes a field: $: expected object"),
        ]:
            rig.updates.offer(wire)
            # then each is refused with its reason and the old model keeps serving
            _wait_for(partial(_refused_with, rig, reason))
            assert rig.serving() == "1.0.0"
        # and the update worker survived: the fleet's next good document is still obeyed
        rig.offer("2.0.0")
        assert rig.wait_idle()["committed"] == {"m": "2.0.0"}
        assert rig.serving() == "2.0.0" and rig.failures == []
    finally:
        rig.close()
