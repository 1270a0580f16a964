"""``edgeml-fleet``: run the server, and manage it over HTTP (tokens, bundles, devices, audit, broker)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from edgeml.errors import EdgeMLError
from edgeml.paths import edgeml_home


def default_data_dir() -> Path:
    return edgeml_home() / "fleet"


def _client():  # type: ignore[no-untyped-def]
    from edgeml.fleet.client import ClientConfig, FleetClient

    return FleetClient(ClientConfig.load())


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str,
           as_json: bool, full: Sequence[dict[str, Any]] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(list(full if full is not None else rows), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for _, header in columns:
        table.add_column(header)
    for row in rows:
        table.add_row(*[_cell(row.get(key)) for key, _ in columns])
    Console().print(table)


_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")


def _cell(value: Any) -> str:
    """One table cell: times to the second (UTC), lists and dicts compact."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, str) and (m := _ISO_TIME.match(value)):
        return f"{m.group(1)} {m.group(2)}"
    return str(value)


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    width = max(len(k) for k in doc) if doc else 0
    for key, value in doc.items():
        click.echo(f"{key:<{width}}  {_cell(value) if not isinstance(value, dict) else json.dumps(value, indent=2)}")


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


class FleetGroup(click.Group):
    """Turns edgeml's own errors into one clear line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeMLError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=FleetGroup)
def main() -> None:
    """edgeml fleet server: devices, bundles, tokens, audit."""


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="default: $EDGEML_HOME/fleet")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8480, show_default=True, type=int)
@click.option("--db", default=None, help="postgresql://user@host/db (default: SQLite in the data dir)")
@click.option("--broker", default=None, help="mqtt://host:port of an external broker (default: embedded)")
@click.option("--broker-port", type=int, default=None, help="embedded broker port (default 1883, or a free one)")
@click.option("--mosquitto-dir", type=click.Path(path_type=Path), default=None,
              help="keep mosquitto password/acl files here in sync on enrol/revoke")
@click.option("--mosquitto-pid-file", type=click.Path(path_type=Path), default=None,
              help="SIGHUP this mosquitto after each sync")
@click.option("--online-window", type=float, default=120.0, show_default=True,
              help="seconds since last contact within which a device counts as online")
@click.option("--broker-ca", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="CA bundle that signed an mqtts:// broker's certificate")
@click.option("--telemetry-retention-days", type=float, default=7.0, show_default=True,
              help="keep raw telemetry this long (hourly roll-ups are kept for good)")
def serve(data_dir: Path | None, host: str, port: int, db: str | None, broker: str | None, broker_port: int | None,
          mosquitto_dir: Path | None, mosquitto_pid_file: Path | None, online_window: float,
          broker_ca: Path | None, telemetry_retention_days: float) -> None:
    """Run the fleet server (HTTP API + embedded MQTT broker)."""
    from edgeml.fleet.server import ServerConfig
    from edgeml.fleet.server import serve as run

    if broker and broker_port is not None:
        raise click.UsageError("--broker-port is for the embedded broker; with --broker put the port in the URL")
    run(ServerConfig(data_dir=data_dir or default_data_dir(), host=host, port=port, db=db, broker=broker,
                     broker_port=broker_port, mosquitto_dir=mosquitto_dir, mosquitto_pid_file=mosquitto_pid_file,
                     online_window_s=online_window, broker_ca=broker_ca,
                     telemetry_retention_days=telemetry_retention_days))


@main.group()
def admin() -> None:
    """Local administration (talks to the database directly)."""


@admin.command("init")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="default: $EDGEML_HOME/fleet")
@click.option("--db", default=None, help="postgresql://… (default: SQLite in the data dir)")
@click.option("--name", default="admin", show_default=True)
def admin_init(data_dir: Path | None, db: str | None, name: str) -> None:
    """Create the first admin token and print it (refused once an admin token exists)."""
    from edgeml.fleet.bootstrap import create_first_admin
    from edgeml.fleet.server import ServerConfig

    config = ServerConfig(data_dir=data_dir or default_data_dir(), db=db)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    token = create_first_admin(config.db_url(), name)
    click.echo(token)
    click.echo("keep it safe: it is shown once. Next: edgeml-fleet login http://HOST:PORT --token <token>", err=True)


@main.command()
@click.argument("url")
@click.option("--token", required=True, help="an API token (from 'admin init' or 'tokens create')")
def login(url: str, token: str) -> None:
    """Check URL + token against the server and save them (0600) for the other commands."""
    from edgeml.fleet.client import ClientConfig, FleetClient

    config = ClientConfig(url, token)
    with FleetClient(config) as client:
        me = client.get("/v1/whoami")
    path = config.save()
    click.echo(f"logged in to {url} as '{me['name']}' ({me['role']}); saved to {path}")


# --- tokens -------------------------------------------------------------------------------------------
TOKEN_COLUMNS = [("id", "id"), ("name", "name"), ("role", "role"), ("created_at", "created"),
                 ("expires_at", "expires"), ("revoked_at", "revoked")]


@main.group()
def tokens() -> None:
    """API tokens for people (admin only)."""


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "deployer", "admin"]), required=True)
@click.option("--expires-in", type=int, default=None, help="lifetime in seconds (default: no expiry)")
@json_option
def tokens_create(name: str, role: str, expires_in: int | None, as_json: bool) -> None:
    with _client() as client:
        created = client.post("/v1/tokens", {"name": name, "role": role, "expires_in_s": expires_in})
    if as_json:
        click.echo(json.dumps(created, indent=2))
    else:
        click.echo(created["token"])
        click.echo(f"token {created['id']} ({role}) created; the secret above is shown once", err=True)


@tokens.command("list")
@json_option
def tokens_list(as_json: bool) -> None:
    with _client() as client:
        rows = client.get("/v1/tokens")
    _table(rows, TOKEN_COLUMNS, "API tokens", as_json)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    with _client() as client:
        row = client.delete(f"/v1/tokens/{token_id}")
    click.echo(f"revoked token {row['id']} ({row['name']})")


# --- keys ---------------------------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """Signing keys whose bundles this fleet accepts."""


@keys.command("trust")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="a label (default: the file name)")
def keys_trust(public_key: Path, name: str | None) -> None:
    with _client() as client:
        row = client.post("/v1/keys", {"name": name or public_key.stem, "public_pem": public_key.read_text()})
    click.echo(f"trusted key {row['key_id']} ({row['name']})")


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    with _client() as client:
        rows = client.get("/v1/keys")
    _table(rows, [("key_id", "key id"), ("name", "name"), ("added_at", "added")], "trusted keys", as_json)


# --- bundles ------------------------------------------------------------------------------------------
BUNDLE_COLUMNS = [("name", "name"), ("version", "version"), ("target", "target"), ("runtime", "runtime"),
                  ("precision", "precision"), ("size", "bytes"), ("id", "sha256"), ("uploaded_at", "uploaded")]


@main.group()
def bundles() -> None:
    """Signed model bundles in the registry."""


@bundles.command("push")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def bundles_push(bundle: Path, as_json: bool) -> None:
    with _client() as client:
        row = client.upload("/v1/bundles", bundle)
    if as_json:
        click.echo(json.dumps(row, indent=2))
    else:
        click.echo(f"pushed {row['name']}@{row['version']} ({row['size']} bytes, sha256 {row['id']})")


@bundles.command("list")
@click.option("--name", default=None)
@json_option
def bundles_list(name: str | None, as_json: bool) -> None:
    with _client() as client:
        rows = client.get("/v1/bundles", name=name)
    _table(rows, BUNDLE_COLUMNS, "bundles", as_json)


@bundles.command("show")
@click.argument("ref")
@json_option
def bundles_show(ref: str, as_json: bool) -> None:
    """REF is a sha256 id or name@version."""
    with _client() as client:
        doc = client.get(f"/v1/bundles/{ref}")
    if not as_json:
        doc = {k: v for k, v in doc.items() if k != "manifest"} | {"inputs": doc["manifest"].get("inputs"),
                                                                   "outputs": doc["manifest"].get("outputs")}
    _show(doc, as_json)


@bundles.command("delete")
@click.argument("ref")
def bundles_delete(ref: str) -> None:
    with _client() as client:
        row = client.delete(f"/v1/bundles/{ref}")
    click.echo(f"deleted {row['name']}@{row['version']}")


# --- devices ------------------------------------------------------------------------------------------
DEVICE_COLUMNS = [("id", "id"), ("name", "name"), ("group", "group"), ("tags", "tags"), ("online", "online"),
                  ("last_seen", "last seen"), ("revoked", "revoked")]


@main.group()
def devices() -> None:
    """Enrolled devices."""


@devices.command("list")
@click.option("--group", default=None)
@click.option("--tag", default=None)
@click.option("--online/--offline", default=None)
@click.option("--include-revoked", is_flag=True)
@json_option
def devices_list(group: str | None, tag: str | None, online: bool | None, include_revoked: bool, as_json: bool) -> None:
    with _client() as client:
        rows = client.get("/v1/devices", group=group, tag=tag, online=online,
                          include_revoked=include_revoked or None)
    _table(rows, DEVICE_COLUMNS, "devices", as_json)


@devices.command("show")
@click.argument("device_id")
@json_option
def devices_show(device_id: str, as_json: bool) -> None:
    with _client() as client:
        _show(client.get(f"/v1/devices/{device_id}"), as_json)


@devices.command("tag")
@click.argument("device_id")
@click.option("--add", "add", multiple=True, help="tag to add (repeatable)")
@click.option("--remove", "remove", multiple=True, help="tag to remove (repeatable)")
@click.option("--group", default=None, help="move to this group ('' removes it from its group)")
@json_option
def devices_tag(device_id: str, add: tuple[str, ...], remove: tuple[str, ...], group: str | None, as_json: bool) -> None:
    body: dict[str, Any] = {"add_tags": list(add), "remove_tags": list(remove)}
    if group is not None:
        body["group"] = group
    with _client() as client:
        _show(client.patch(f"/v1/devices/{device_id}", body), as_json)


@devices.command("revoke")
@click.argument("device_id")
def devices_revoke(device_id: str) -> None:
    with _client() as client:
        row = client.post(f"/v1/devices/{device_id}/revoke")
    click.echo(f"revoked device {row['id']}: its API token and broker login no longer work")


# --- enrolment tokens ---------------------------------------------------------------------------------
@main.group("enroll-token")
def enroll_token() -> None:
    """One-time tokens that let a device enrol."""


@enroll_token.command("create")
@click.option("--group", default=None)
@click.option("--tag", "tags", multiple=True, help="tag the device gets (repeatable)")
@click.option("--expires-in", type=int, default=3600, show_default=True, help="seconds")
@json_option
def enroll_token_create(group: str | None, tags: tuple[str, ...], expires_in: int, as_json: bool) -> None:
    with _client() as client:
        row = client.post("/v1/enrollment-tokens", {"group": group, "tags": list(tags), "expires_in_s": expires_in})
    if as_json:
        click.echo(json.dumps(row, indent=2))
    else:
        click.echo(row["token"])
        click.echo(f"one-time enrolment token, expires {row['expires_at']}; on the device: "
                   f"edgeml-agent enroll --server URL --token <token>", err=True)


# --- audit --------------------------------------------------------------------------------------------
@main.command()
@click.option("--actor", default=None)
@click.option("--action", default=None, help="exact action, or a prefix ending in '.' (e.g. device.)")
@click.option("--target", default=None)
@click.option("--since", default=None, help="ISO time")
@click.option("--until", default=None, help="ISO time")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def audit(actor: str | None, action: str | None, target: str | None, since: str | None, until: str | None,
          limit: int, as_json: bool) -> None:
    """Who changed what, when, from where."""
    with _client() as client:
        rows = client.get("/v1/audit", actor=actor, action=action, target=target, since=since, until=until,
                          limit=limit)
    _table(rows, [("at", "when"), ("actor", "who"), ("action", "action"), ("target", "target"),
                  ("source", "from"), ("details", "details")], "audit log", as_json)


# --- broker -------------------------------------------------------------------------------------------
@main.command("broker-config")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="directory for passwords, acl and mosquitto.conf")
@click.option("--port", type=int, default=1883, show_default=True, help="listener port in mosquitto.conf")
@click.option("--bind", default="127.0.0.1", show_default=True)
@click.option("--pid-file", type=click.Path(path_type=Path), default=None, help="SIGHUP this mosquitto afterwards")
def broker_config(out_dir: Path, port: int, bind: str, pid_file: Path | None) -> None:
    """Write Mosquitto password/ACL files enforcing the fleet's topic rules (and a mosquitto.conf)."""
    from edgeml.fleet.broker.mosquitto import MosquittoFiles, write_mosquitto_files

    with _client() as client:
        doc = client.get("/v1/broker/mosquitto")
    paths = write_mosquitto_files(out_dir, MosquittoFiles(doc["password_file"], doc["acl_file"]),
                                  pid_file=pid_file, port=port, bind=bind)
    for what, path in paths.items():
        click.echo(f"{what}: {path}")
    click.echo("keep them in sync: run 'edgeml-fleet serve --mosquitto-dir DIR [--mosquitto-pid-file F]'", err=True)




@main.command()
@click.argument("device_id")
@click.option("--minutes", type=float, default=60.0, show_default=True, help="look back this far")
@click.option("--json", "as_json", is_flag=True)
def telemetry(device_id: str, minutes: float, as_json: bool) -> None:
    """One device's telemetry: per-model windows, drift and recent events."""
    with _client() as client:
        doc = client.get(f"/v1/telemetry/{device_id}", minutes=minutes)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    _table(doc["windows"][:30], [("ts", "time"), ("model", "model"), ("version", "version"), ("requests", "requests"),
                                 ("errors", "errors"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"),
                                 ("runtime", "runtime"), ("device", "device"), ("fallback", "fallback")],
           f"telemetry of {device_id} (newest first)", False)
    _table(doc["drift"], [("model", "model"), ("version", "version"), ("score", "drift (PSI)")], "drift", False)
    _table([{"ts": e["ts"], "kind": e["kind"], "detail": {k: v for k, v in e["body"].items() if k != "event"}}
            for e in doc["events"][:20]], [("ts", "time"), ("kind", "event"), ("detail", "detail")], "events", False)


@main.command()
@click.option("--minutes", type=float, default=10.0, show_default=True, help="look back this far")
@click.option("--json", "as_json", is_flag=True)
def health(minutes: float, as_json: bool) -> None:
    """Fleet-wide health per model version: devices, req/s, error rate, p95 latency, drift."""
    with _client() as client:
        rows = client.get("/v1/health", minutes=minutes)
    _table(rows, [("model", "model"), ("version", "version"), ("devices", "devices"), ("requests_per_s", "req/s"),
                  ("error_rate", "error rate"), ("p95_ms", "p95 ms"), ("drift", "drift (PSI)")],
           f"fleet health, last {minutes:g} min", as_json)


from edgeml.fleet.cli_rollouts import rollout  # noqa: E402 - it uses the helpers above

main.add_command(rollout)


if __name__ == "__main__":
    main()
