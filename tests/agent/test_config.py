"""Agent config: validated TOML, errors name the key, paths relative to the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeml.errors import ConfigError
from edgeml_agent.config import DEFAULT_PORT, load_config, parse_config
from edgeml_agent.telemetry.settings import TelemetryConfig
from edgeml_agent.updates.settings import UpdatesConfig


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


def test_component_sections_are_typed_fields_parsed_beside_their_component():
    cfg = parse_config({"data_dir": "/d", "telemetry": {"broker": "mqtt://b", "interval_s": 2},
                        "updates": {"targets": ["x86-cpu"], "probation_s": 5}})
    assert cfg.telemetry.broker == "mqtt://b" and cfg.telemetry.interval_s == 2.0
    assert cfg.updates.targets == ("x86-cpu",) and cfg.updates.settings.probation_s == 5.0
    assert cfg.updates.settings.target_ids == ("x86-cpu",)
    defaults = parse_config({"data_dir": "/d"})
    assert defaults.telemetry == TelemetryConfig() and defaults.updates == UpdatesConfig()
    with pytest.raises(ConfigError, match=r"'telemetry\.brokr' is not a known key"):
        parse_config({"data_dir": "/d", "telemetry": {"brokr": "x"}})
    with pytest.raises(ConfigError, match=r"'updates\.targets\[0\]' must be a target id"):
        parse_config({"data_dir": "/d", "updates": {"targets": [3]}})


def test_parsing_needs_no_component_import_and_no_test_order():
    """In a fresh interpreter (no other test ran first), the sections parse, and parsing imported none
    of the components: there are no import side effects to depend on."""
    code = (
        "import sys\n"
        "from edgeml_agent.config import parse_config\n"
        "cfg = parse_config({'data_dir': '/d', 'telemetry': {'broker': 'mqtt://b'}, 'updates': {'enabled': False}})\n"
        "assert cfg.telemetry.broker == 'mqtt://b' and cfg.updates.enabled is False, cfg\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('edgeml_agent') and m.endswith('component'))\n"
        "assert loaded == [], loaded\n"
        "assert 'edgeml_agent.components' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
