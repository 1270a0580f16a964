"""Agent config: validated TOML, errors name the key, paths relative to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeml.errors import ConfigError
from edgeml_agent import config as config_module
from edgeml_agent.config import DEFAULT_PORT, Section, load_config, parse_config, register_section


def write(tmp_path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_full_config_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, """
data_dir = "data"
trusted_keys = ["keys/builder.pub", "/etc/edgeml/trusted"]
[server]
port = 0
api_token = "0123456789abcdef0123"
max_body_bytes = 2048
[runtime]
num_threads = 2
cpu_fallback = false
[models.mlp]
max_batch_size = 16
max_wait_ms = 1.5
"""))
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.trusted_keys == (tmp_path / "keys/builder.pub", Path("/etc/edgeml/trusted"))
    assert (cfg.server.host, cfg.server.port, cfg.server.max_body_bytes) == ("127.0.0.1", 0, 2048)
    assert cfg.runtime.num_threads == 2 and cfg.runtime.cpu_fallback is False and cfg.runtime.smoke_test
    assert cfg.model("mlp").max_batch_size == 16 and cfg.model("other").max_batch_size == 1
    minimal = parse_config({"data_dir": "/var/lib/edgeml"})
    assert minimal.server.port == DEFAULT_PORT and minimal.server.host == "127.0.0.1"   # loopback by default
    assert minimal.runtime.cpu_fallback is None and minimal.trusted_keys[0].name == "trusted"


@pytest.mark.parametrize(("text", "message"), [
    ('data_dir = "d"\nport = 1', "key 'port' is not a known key"),
    ('data_dir = "d"\n[server]\nprot = 1', "key 'server.prot' is not a known key"),
    ('data_dir = "d"\n[server]\nport = "80"', "key 'server.port' must be int"),
    ('data_dir = "d"\n[server]\nport = 70000', "key 'server.port' must be at least 0 and at most 65535"),
    ('data_dir = "d"\n[server]\napi_token = "short"', "key 'server.api_token' must be at least 16"),
    ('data_dir = "d"\n[runtime]\ncpu_fallback = "yes"', "key 'runtime.cpu_fallback' must be bool"),
    ('data_dir = "d"\n[runtime]\nnum_threads = true', "key 'runtime.num_threads' must be int"),
    ('data_dir = "d"\n[models.m]\nmax_batch_size = 0', "key 'models.m.max_batch_size' must be at least 1"),
    ('data_dir = "d"\n[models.m]\nbatch = 4', "key 'models.m.batch' is not a known key"),
    ('data_dir = "d"\ntrusted_keys = [1]', "key 'trusted_keys[0]' must be a path"),
    ('[server]\nport = 1', "key 'data_dir' is required"),
    ('data_dir = ', "not valid TOML"),
])
def test_bad_config_names_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read agent config"):
        load_config(tmp_path / "nope.toml")


def test_components_register_their_own_section(monkeypatch):
    monkeypatch.setattr(config_module, "_SECTIONS", {})

    def telemetry(s: Section) -> dict:
        s.only({"broker"})
        return {"broker": s.get("broker", str, "mqtt://127.0.0.1")}

    register_section("telemetry", telemetry)
    cfg = parse_config({"data_dir": "/d", "telemetry": {"broker": "mqtt://b"}})
    assert cfg.sections["telemetry"] == {"broker": "mqtt://b"}
    with pytest.raises(ConfigError, match=r"'telemetry\.brokr' is not a known key"):
        parse_config({"data_dir": "/d", "telemetry": {"brokr": "x"}})
