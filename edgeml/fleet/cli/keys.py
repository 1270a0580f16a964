"""``edgeml-fleet keys``: the signing keys whose bundles this fleet accepts."""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.fleet.cli.output import call, json_option, table

KEY_COLUMNS = [("key_id", "key id"), ("name", "name"), ("added_at", "added")]


@click.group()
def keys() -> None:
    """Signing keys whose bundles this fleet accepts."""


@keys.command("trust")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="a label (default: the file name)")
def keys_trust(public_key: Path, name: str | None) -> None:
    row = call("post", "/v1/keys", {"name": name or public_key.stem, "public_pem": public_key.read_text()})
    click.echo(f"trusted key {row['key_id']} ({row['name']})")


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    table(call("get", "/v1/keys"), KEY_COLUMNS, "trusted keys", as_json)
