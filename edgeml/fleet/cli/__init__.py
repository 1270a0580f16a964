"""``edgeml-fleet``: run the server, and manage it over HTTP (tokens, bundles, devices, audit, rollouts).

One module per command group; this root group only registers them::

    server.py    serve, admin init, login, broker-config
    tokens.py    tokens (people), enroll-token (devices)
    keys.py      keys        bundles.py   bundles        devices.py   devices
    observe.py   audit, telemetry, health
    rollouts.py  rollout
    captures.py  captures
    ingest.py    ingest (a telemetry ingest worker)
    output.py    the fleet Client they all call, --json and table printing

The group modules import ``output`` and never this package's root or each other.
"""

from __future__ import annotations

import click

from edgeml.cli_errors import ErrorExitGroup
from edgeml.fleet.cli import bundles, captures, devices, ingest, keys, observe, rollouts, server, tokens


class FleetGroup(ErrorExitGroup):
    """Every EdgeMLError exits with code 1."""


@click.group(cls=FleetGroup)
@click.version_option(package_name="edgeml", prog_name="edgeml-fleet")
def main() -> None:
    """edgeml fleet server: devices, bundles, tokens, audit."""


for _command in (server.serve, server.admin, server.login, server.broker_config,
                 tokens.tokens, tokens.enroll_token, keys.keys, bundles.bundles, devices.devices,
                 observe.audit, observe.telemetry, observe.health, rollouts.rollout, captures.captures,
                 ingest.ingest):
    main.add_command(_command)

__all__ = ["FleetGroup", "main"]
