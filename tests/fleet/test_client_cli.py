"""The ``edgeml-fleet`` commands are a thin layer over :class:`edgeml.fleet.Client`: each test patches the
one place the client is made (``Client`` as ``edgeml.fleet.cli.output.client()`` calls it) and asserts on
the typed call the command made and on what it printed. The real server behind the same commands:
test_cli_and_restart.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeml.fleet.cli import main as fleet_cli
from edgeml.fleet.cli import output
from edgeml.fleet.sdk.records import Bundle, Rollout

BUNDLE = {"id": "ab" * 32, "name": "cls", "version": "2.0.0", "target": "x86-cpu", "runtime": "onnxruntime",
          "precision": "fp32", "key_id": "k" * 16, "size": 3445, "uploaded_at": "2026-11-30T17:00:00",
          "uploaded_by": "ci"}


class RecordingClient:
    """Stands in for Client: records each method call, answers what the test set for that method."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __enter__(self) -> RecordingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def method(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            answer = self.answers[name]
            return answer(*args) if callable(answer) else answer
        return method


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Callable[..., RecordingClient]:
    def install(**answers: Any) -> RecordingClient:
        fake = RecordingClient(answers)
        monkeypatch.setattr(output, "Client", lambda: fake)   # what output.client() makes
        return fake
    return install


def run(*args: str) -> str:
    result = CliRunner().invoke(fleet_cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_bundles_push_calls_push_bundle_and_prints_the_servers_json_as_sent(recorded, tmp_path: Path) -> None:
    fake = recorded(push_bundle=Bundle.from_json({**BUNDLE, "newer_field": 1}))
    path = tmp_path / "cls.edgepkg"
    path.write_bytes(b"x")
    assert run("bundles", "push", str(path)) == f"pushed cls@2.0.0 (3445 bytes, sha256 {'ab' * 32})\n"
    assert json.loads(run("bundles", "push", str(path), "--json")) == {**BUNDLE, "newer_field": 1}
    assert fake.calls == [("push_bundle", (path,), {})] * 2


def test_bundles_export_mirror_lists_then_downloads_each_missing_bundle(recorded, tmp_path: Path) -> None:
    def download(ref: str, dest: Path) -> str:
        dest.write_bytes(b"bundle")
        return ref
    fake = recorded(list_bundles=[Bundle.from_json(BUNDLE)], download_bundle=download)
    out = run("bundles", "export-mirror", str(tmp_path / "mirror"), "--name", "cls")
    assert "1 bundle(s) written" in out
    assert [(name, args[0]) for name, args, _ in fake.calls] == [("list_bundles", "cls"),
                                                                 ("download_bundle", "ab" * 32)]


def test_tokens_and_enrolment_tokens_pass_the_options_to_the_client(recorded) -> None:
    fake = recorded(create_token={"id": "tok_1", "token": "efl_secret"},
                    create_enrollment_token={"token": "efe_once", "expires_at": "soon"})
    assert run("tokens", "create", "ci", "--role", "deployer", "--expires-in", "600") == "efl_secret\n"
    assert run("enroll-token", "create", "--group", "lab", "--tag", "a", "--tag", "b") == "efe_once\n"
    assert fake.calls == [("create_token", ("ci", "deployer", 600), {}),
                          ("create_enrollment_token", (), {"group": "lab", "tags": ("a", "b"), "expires_in_s": 3600})]


def test_keys_trust_sends_the_public_key_text_named_after_the_file(recorded, tmp_path: Path) -> None:
    fake = recorded(trust_key={"key_id": "0123456789abcdef", "name": "builder"})
    pub = tmp_path / "builder.pub"
    pub.write_text("-----BEGIN PUBLIC KEY-----\n")
    assert run("keys", "trust", str(pub)) == "trusted key 0123456789abcdef (builder)\n"
    assert fake.calls == [("trust_key", ("-----BEGIN PUBLIC KEY-----\n", "builder"), {})]


def test_rollout_create_passes_selector_waves_and_every_gate_to_create_rollout(recorded) -> None:
    answer = {"id": "ro-1", "bundle": "cls@2.0.0", "devices": 4, "waves": 2, "state": "running"}
    fake = recorded(create_rollout=Rollout.from_json(answer), abort_rollout=Rollout.from_json(
        {**answer, "state": "aborting"}))
    out = run("rollout", "create", "cls@2.0.0", "--select", "group=canary", "--waves", "50,100", "--max-drift", "0.2",
              "--min-requests", "20", "--min-reporting", "1", "--observe", "5m", "--on-failure", "abort")
    assert out.startswith("rollout ro-1: cls@2.0.0 to 4 devices (group=canary) in 2 waves")
    assert run("rollout", "abort", "ro-1", "--reason", "bad canary") == "rollout ro-1 is now aborting\n"
    assert fake.calls == [
        ("create_rollout", ("cls@2.0.0",), {"group": "canary", "tag": None, "waves": [50, 100], "max_error_rate": 0.05,
                                             "max_latency_regression": 0.5, "min_shadow_agreement": None,
                                             "max_drift": 0.2, "min_requests": 20, "min_reporting": 1.0,
                                             "observe_s": 300.0, "wave_timeout_s": 1800.0, "on_failure": "abort",
                                             "probation_s": None}),
        ("abort_rollout", ("ro-1", "bad canary"), {})]
