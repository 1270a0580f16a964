"""``edgeml-fleet serve``, ``admin init``, ``login`` and ``broker-config``: run a server, set it up, connect."""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.fleet.cli.output import call
from edgeml.fleet.client import ClientConfig, FleetClient
from edgeml.paths import edgeml_home


def default_data_dir() -> Path:
    return edgeml_home() / "fleet"


@click.command()
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
@click.option("--max-bundle-bytes", type=click.IntRange(min=1), default=2 << 30, show_default=True,
              help="refuse a bundle upload larger than this many bytes (413), counted while it streams")
@click.option("--bundle-mirror", default=None, metavar="URL",
              help="devices download bundles from URL<name>/<version>.edgepkg (any static server; fill it with "
                   "'edgeml-fleet bundles export-mirror'), falling back to this server")
@click.option("--ingest-workers", type=click.IntRange(min=0, max=64), default=0, show_default=True,
              help="store telemetry in this many 'edgeml-fleet ingest' child processes (needs --broker; 0: in "
                   "this process)")
@click.option("--no-ingest", is_flag=True,
              help="store no telemetry here: 'edgeml-fleet ingest' workers do it (needs --broker)")
def serve(data_dir: Path | None, host: str, port: int, db: str | None, broker: str | None, broker_port: int | None,
          mosquitto_dir: Path | None, mosquitto_pid_file: Path | None, online_window: float,
          broker_ca: Path | None, telemetry_retention_days: float, max_bundle_bytes: int,
          bundle_mirror: str | None, ingest_workers: int, no_ingest: bool) -> None:
    """Run the fleet server (HTTP API + embedded MQTT broker)."""
    from edgeml.fleet.server import ServerConfig
    from edgeml.fleet.server import serve as run

    if bundle_mirror:
        from edgeml.errors import ConfigError
        from edgeml.fleet.bundle_links import check_mirror

        try:
            check_mirror(bundle_mirror)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--bundle-mirror") from exc
    if broker and broker_port is not None:
        raise click.UsageError("--broker-port is for the embedded broker; with --broker put the port in the URL")
    run(ServerConfig(data_dir=data_dir or default_data_dir(), host=host, port=port, db=db, broker=broker,
                     broker_port=broker_port, mosquitto_dir=mosquitto_dir, mosquitto_pid_file=mosquitto_pid_file,
                     online_window_s=online_window, broker_ca=broker_ca,
                     telemetry_retention_days=telemetry_retention_days, max_bundle_bytes=max_bundle_bytes,
                     bundle_mirror=bundle_mirror, ingest=not no_ingest, ingest_workers=ingest_workers))


@click.group()
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


@click.command()
@click.argument("url")
@click.option("--token", required=True, help="an API token (from 'admin init' or 'tokens create')")
def login(url: str, token: str) -> None:
    """Check URL + token against the server and save them (0600) for the other commands."""
    config = ClientConfig(url, token)
    with FleetClient(config) as fleet:
        me = fleet.get("/v1/whoami")
    path = config.save()
    click.echo(f"logged in to {url} as '{me['name']}' ({me['role']}); saved to {path}")


@click.command("broker-config")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="directory for passwords, acl and mosquitto.conf")
@click.option("--port", type=int, default=1883, show_default=True, help="listener port in mosquitto.conf")
@click.option("--bind", default="127.0.0.1", show_default=True)
@click.option("--pid-file", type=click.Path(path_type=Path), default=None, help="SIGHUP this mosquitto afterwards")
def broker_config(out_dir: Path, port: int, bind: str, pid_file: Path | None) -> None:
    """Write Mosquitto password/ACL files enforcing the fleet's topic rules (and a mosquitto.conf)."""
    from edgeml.fleet.broker.mosquitto import MosquittoFiles, write_mosquitto_files

    doc = call("get", "/v1/broker/mosquitto")
    paths = write_mosquitto_files(out_dir, MosquittoFiles(doc["password_file"], doc["acl_file"]),
                                  pid_file=pid_file, port=port, bind=bind)
    for what, path in paths.items():
        click.echo(f"{what}: {path}")
    click.echo("keep them in sync: run 'edgeml-fleet serve --mosquitto-dir DIR [--mosquitto-pid-file F]'", err=True)
