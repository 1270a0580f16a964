"""edgeml-agent install/status in-process (the process tests run `run` and `install` as subprocesses)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgeml.bundle import SigningKey
from edgeml_agent.cli import main
from tests.support.bundles import make_bundle
from tests.support.tiny_models import tiny_mlp


def test_install_verifies_against_the_given_keys_offline(tmp_path, signing_key):
    bundle = make_bundle(tmp_path, signing_key, tiny_mlp(tmp_path / "m.onnx"), name="mlp")
    (tmp_path / "good.pub").write_bytes(signing_key.public_pem())
    (tmp_path / "other.pub").write_bytes(SigningKey.generate().public_pem())
    runner = CliRunner()
    refused = runner.invoke(main, ["install", str(bundle), "--data-dir", str(tmp_path / "d"),
                                   "--trust", str(tmp_path / "other.pub")])
    assert refused.exit_code == 1 and "not trusted here" in refused.output
    assert not (tmp_path / "d" / "versions" / "mlp").exists()
    no_keys = runner.invoke(main, ["install", str(bundle), "--data-dir", str(tmp_path / "d")])
    assert no_keys.exit_code == 2 and "no trusted keys" in no_keys.output
    ok = runner.invoke(main, ["install", str(bundle), "--data-dir", str(tmp_path / "d"),
                              "--trust", str(tmp_path / "good.pub"), "--no-activate"])
    assert ok.exit_code == 0 and "mlp@1.0.0 installed (signed by" in ok.output
    status = runner.invoke(main, ["status", "--data-dir", str(tmp_path / "d"), "--json"])
    assert json.loads(status.output)["models"] == {"mlp": {"current": None, "versions": ["1.0.0"]}}


def test_bad_config_exits_1_naming_the_key(tmp_path):
    (tmp_path / "a.toml").write_text('data_dir = "d"\n[server]\nprot = 1\n')
    result = CliRunner().invoke(main, ["install", str(tmp_path / "a.toml"), "--config", str(tmp_path / "a.toml")])
    assert result.exit_code == 1 and "key 'server.prot' is not a known key" in result.output
