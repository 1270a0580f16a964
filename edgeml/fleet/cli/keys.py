"""``edgeml-fleet keys``: the fleet's keys and their roles — bundle signers (which models may run) and
the fleet key (signs desired states: which model runs now)."""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.fleet.cli.output import client, echo_json, json_option, table

KEY_COLUMNS = [("key_id", "key id"), ("role", "role"), ("status", "status"), ("name", "name"),
               ("added_at", "added"), ("changed_at", "retired/revoked")]


@click.group()
def keys() -> None:
    """Keys and their roles: bundle signers and the fleet key."""


@keys.command("trust")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="a label (default: the file name)")
def keys_trust(public_key: Path, name: str | None) -> None:
    """Accept bundles signed by PUBLIC_KEY (a builder's .pub); devices learn it with their next desired state."""
    with client() as fleet:
        row = fleet.trust_key(public_key.read_text(), name or public_key.stem)
    click.echo(f"trusted key {row['key_id']} ({row['name']})")


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    """Every key with its role (fleet / bundle-signer) and status (active / retired / revoked)."""
    with client() as fleet:
        rows = fleet.list_keys()
    table(rows, KEY_COLUMNS, "keys", as_json)


@keys.command("revoke")
@click.argument("key_id")
@json_option
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke bundle signer KEY_ID fleet-wide: refused on upload, and every device refuses bundles signed only
    by it from its next desired state on (installed ones at their next load)."""
    with client() as fleet:
        row = fleet.revoke_key(key_id)
    if as_json:
        echo_json(row)
        return
    click.echo(f"revoked key {row['key_id']} ({row['name']}); devices drop it with their next desired state")


@keys.command("untrust")
@click.argument("key_id")
def keys_untrust(key_id: str) -> None:
    """Stop accepting uploads signed by KEY_ID; devices drop it with their next desired state (revoke a leaked
    key instead: that also overrides device configs and can never be undone)."""
    with client() as fleet:
        row = fleet.untrust_key(key_id)
    click.echo(f"untrusted key {row['key_id']} ({row['name']})")


@keys.command("rotate-fleet")
@json_option
def keys_rotate_fleet(as_json: bool) -> None:
    """Replace the fleet key (desired states) by a new one the current key vouches for; no re-enrolment."""
    with client() as fleet:
        row = fleet.rotate_fleet_key()
    if as_json:
        echo_json(row)
        return
    click.echo(f"fleet key {row['previous_key_id']} retired; new fleet key {row['key_id']} "
               f"({row['reissued']} desired states re-signed)")
