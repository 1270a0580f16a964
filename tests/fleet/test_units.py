"""Small seams: topic rules, broker URL parsing, CLI config file, port errors."""

from __future__ import annotations

import socket
import stat

import pytest

from edgeml.errors import ConfigError, FleetError
from edgeml.fleet.broker import parse_broker_url
from edgeml.fleet.client import ClientConfig, config_path
from edgeml.fleet.server import ServerConfig, serve
from edgeml.protocol import (
    device_may_publish,
    device_may_subscribe,
    service_may_publish,
    service_may_subscribe,
)


@pytest.mark.parametrize(("topic", "allowed"), [
    ("edgeml/v1/dev-a/telemetry", True),
    ("edgeml/v1/dev-a/events", True),
    ("edgeml/v1/dev-a/status", True),
    ("edgeml/v1/dev-a", False),
    ("edgeml/v1/dev-a/", False),
    ("edgeml/v1/dev-b/telemetry", False),
    ("edgeml/v1/dev-ab/telemetry", False),
    ("edgeml/v1/+/telemetry", False),
    ("edgeml/v1/dev-a/#", False),
    ("other/dev-a/telemetry", False),
])
def test_device_publish_rule(topic: str, allowed: bool) -> None:
    assert device_may_publish("dev-a", topic) is allowed


def test_device_subscribe_rule_is_its_own_desired_topic_only() -> None:
    assert device_may_subscribe("dev-a", "edgeml/v1/dev-a/desired")
    for topic in ("edgeml/v1/dev-b/desired", "edgeml/v1/+/desired", "edgeml/#", "edgeml/v1/dev-a/#"):
        assert not device_may_subscribe("dev-a", topic)


def test_service_rules() -> None:
    assert service_may_publish("edgeml/v1/dev-a/desired")
    assert not service_may_publish("edgeml/v1/dev-a/telemetry")
    assert not service_may_publish("edgeml/v1/+/desired")
    assert service_may_subscribe("edgeml/#")
    assert service_may_subscribe("$share/ingest/edgeml/v1/+/telemetry")
    assert not service_may_subscribe("$SYS/#")


def test_broker_urls() -> None:
    b = parse_broker_url("mqtt://broker.local:1884")
    assert (b.host, b.port, b.tls) == ("broker.local", 1884, False)
    assert parse_broker_url("mqtts://b").port == 8883
    with pytest.raises(ConfigError, match="mqtt://host:port"):
        parse_broker_url("http://b:1883")


def test_cli_config_is_private_and_env_overrides_it(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="edgeml-fleet login"):
        ClientConfig.load()
    path = ClientConfig("http://127.0.0.1:8480", "efl_x").save()
    assert path == config_path() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ClientConfig.load() == ClientConfig("http://127.0.0.1:8480", "efl_x")
    monkeypatch.setenv("EDGEML_FLEET_TOKEN", "efl_y")
    assert ClientConfig.load().token == "efl_y"


def test_a_taken_api_port_names_the_option(tmp_path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(FleetError, match=f"{port}.*--port"):
            serve(ServerConfig(data_dir=tmp_path, port=port, broker="mqtt://127.0.0.1:1"))


def test_external_broker_address_goes_to_devices(tmp_path) -> None:
    from tests.fleet.conftest import make_fleet

    fleets = make_fleet(tmp_path / "d", f"sqlite:///{tmp_path / 'f.db'}", broker="mqtts://mqtt.example.org:8884")
    fleet = next(fleets)
    try:
        mqtt = fleet.enroll()["mqtt"]
        assert (mqtt["host"], mqtt["port"], mqtt["tls"]) == ("mqtt.example.org", 8884, True)
    finally:
        fleets.close()


def test_an_enrolment_the_broker_cannot_take_fails_whole_and_can_be_retried(tmp_path) -> None:
    # Before: the enrolment answered 201 while mosquitto never heard of the device (token used up, device
    # unable to connect). Now it answers 503 "try again" and nothing happened.
    from tests.fleet.conftest import make_fleet

    pid_file = tmp_path / "mosquitto.pid"
    fleets = make_fleet(tmp_path / "d", f"sqlite:///{tmp_path / 'f.db'}", mosquitto_dir=tmp_path / "m",
                        mosquitto_pid_file=pid_file)
    fleet = next(fleets)
    try:
        pid_file.write_text("999999999\n")  # a mosquitto that is gone
        token = fleet.call("POST", "/v1/enrollment-tokens", json={}).json()["token"]
        r = fleet.http.post("/v1/enroll", headers=fleet.auth(token), json={"hardware": {}, "installed": {}})
        assert r.status_code == 503 and "try again" in r.json()["detail"], r.text
        assert fleet.call("GET", "/v1/devices").json() == []
        pid_file.unlink()  # not running: files are written for it to read when it starts
        r = fleet.http.post("/v1/enroll", headers=fleet.auth(token), json={"hardware": {}, "installed": {}})
        assert r.status_code == 201, r.text  # the same one-time token still works
        assert r.json()["device_id"] in (tmp_path / "m" / "passwords").read_text()
    finally:
        fleets.close()
