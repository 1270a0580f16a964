"""``edgeml-agent enroll``: trade a one-time enrolment token for this device's own credentials.

The device sends its host probe (hardware, runtimes) and installed bundle versions; the fleet answers
with a device id, an API token and MQTT username/password, stored in ``<data-dir>/credentials.json``
with mode 0600 (written to a temporary file created 0600, then renamed, so it is never readable by others).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import NotRequired, TypedDict

import click

from edgeml.errors import AuthError, ConfigError, FleetError
from edgeml.fileio import write_atomic
from edgeml.jsontypes import JSON

CREDENTIALS_FILE = "credentials.json"


class MqttCredentials(TypedDict, total=False):
    host: str
    port: int
    tls: bool
    username: str
    password: str


class Credentials(TypedDict):
    """``credentials.json``: what the fleet gave this device at enrolment."""

    server: str
    device_id: str
    api_token: str
    mqtt: NotRequired[MqttCredentials]


def host_probe() -> dict[str, JSON]:
    from edgeml.runtimes.probe import probe_host

    return probe_host().to_json()


def installed_versions(data_dir: Path) -> dict[str, JSON]:
    """edgeml's version and the current version of each bundle already installed in ``data_dir``."""
    from edgeml import __version__
    from edgeml_agent.store import Store

    store = Store(data_dir, trusted={})
    return {"edgeml": __version__, "bundles": {name: store.current(name) for name in store.models()}}


def credentials_path(data_dir: Path) -> Path:
    return data_dir / CREDENTIALS_FILE


def load_credentials(data_dir: Path) -> Credentials:
    """The only reader of ``credentials.json`` (telemetry and updates get theirs from here)."""
    path = credentials_path(data_dir)
    try:
        data: Credentials = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} does not exist: enrol first with 'edgeml-agent enroll --server URL --token T'") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}): enrol again with 'edgeml-agent enroll --force'") from exc
    return data


def enrolled(data_dir: Path) -> Credentials | None:
    """This device's credentials, or None when it was never enrolled (telemetry and updates stay off)."""
    return load_credentials(data_dir) if credentials_path(data_dir).exists() else None


def _write_secret(path: Path, data: Credentials) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # created 0600 before any byte is written: never readable by others, not even for a moment
    write_atomic(path, json.dumps(data, indent=2), mode=0o600)


def enroll(server: str, token: str, data_dir: Path, *, name: str | None = None, force: bool = False,
           timeout: float = 30.0) -> Credentials:
    """Enrol this device; returns (and stores) the credentials document."""
    import httpx

    path = credentials_path(data_dir)
    if path.exists() and not force:
        raise ConfigError(f"this device is already enrolled ({path}); pass --force to enrol again")
    body = {"name": name or socket.gethostname(), "hardware": host_probe(), "installed": installed_versions(data_dir)}
    url = server.rstrip("/") + "/v1/enroll"
    try:
        response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    except httpx.TransportError as exc:
        raise FleetError(f"cannot reach the fleet server at {server} ({exc}): check --server") from exc
    if response.status_code == 401:
        raise AuthError(f"enrolment refused: {response.json().get('detail', response.text)}")
    if response.status_code >= 400:
        raise FleetError(f"enrolment failed ({response.status_code}): {response.text}")
    answer = response.json()
    credentials: Credentials = {"server": server.rstrip("/"), "device_id": answer["device_id"],
                                "api_token": answer["api_token"], "mqtt": answer["mqtt"]}
    _write_secret(path, credentials)
    # Key roles are kept apart from the start: the fleet key checks desired states only, the bundle keys
    # check bundles only (a fleet older than the rollout engine sends no keys: the operator places them).
    write_trusted_keys(data_dir / "trusted" / "fleet", [answer["desired_key_pem"]] if answer.get("desired_key_pem")
                       else [])
    write_trusted_keys(data_dir / "trusted" / "bundles", list(answer.get("trusted_keys") or []))
    return credentials


def write_trusted_keys(directory: Path, pems: list[str]) -> list[str]:
    """Trust what the fleet said to trust, in one role's directory (``<key id>.pub`` files); returns the ids."""
    from edgeml.bundle.keys import load_public_key
    from edgeml_agent.trust import write_keys

    return write_keys(directory, [load_public_key(pem.encode()) for pem in pems])


@click.command("enroll")
@click.option("--server", required=True, help="the fleet server's URL, e.g. http://fleet.local:8480")
@click.option("--token", required=True, help="a one-time enrolment token ('edgeml-fleet enroll-token create')")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("/var/lib/edgeml-agent"),
              show_default=True, help="where the credentials (and installed bundles) live")
@click.option("--name", default=None, help="device name shown in the fleet (default: host name)")
@click.option("--force", is_flag=True, help="enrol again even if credentials exist")
def enroll_command(server: str, token: str, data_dir: Path, name: str | None, force: bool) -> None:
    """Enrol this device with a fleet server."""
    try:
        creds = enroll(server, token, data_dir, name=name, force=force)
    except (AuthError, FleetError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"enrolled as {creds['device_id']}; credentials in {credentials_path(data_dir)} (0600)")
