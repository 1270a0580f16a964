"""``edgeml-fleet bundles``: push, list, show and delete signed bundles in the registry."""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.fleet.cli.output import call, echo_json, json_option, show, table

BUNDLE_COLUMNS = [("name", "name"), ("version", "version"), ("target", "target"), ("runtime", "runtime"),
                  ("precision", "precision"), ("size", "bytes"), ("id", "sha256"), ("uploaded_at", "uploaded")]


@click.group()
def bundles() -> None:
    """Signed model bundles in the registry."""


@bundles.command("push")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def bundles_push(bundle: Path, as_json: bool) -> None:
    row = call("upload", "/v1/bundles", bundle)
    if as_json:
        echo_json(row)
    else:
        click.echo(f"pushed {row['name']}@{row['version']} ({row['size']} bytes, sha256 {row['id']})")


@bundles.command("list")
@click.option("--name", default=None)
@json_option
def bundles_list(name: str | None, as_json: bool) -> None:
    table(call("get", "/v1/bundles", name=name), BUNDLE_COLUMNS, "bundles", as_json)


@bundles.command("show")
@click.argument("ref")
@json_option
def bundles_show(ref: str, as_json: bool) -> None:
    """REF is a sha256 id or name@version."""
    doc = call("get", f"/v1/bundles/{ref}")
    if not as_json:
        doc = {k: v for k, v in doc.items() if k != "manifest"} | {"inputs": doc["manifest"].get("inputs"),
                                                                   "outputs": doc["manifest"].get("outputs")}
    show(doc, as_json)


@bundles.command("delete")
@click.argument("ref")
def bundles_delete(ref: str) -> None:
    row = call("delete", f"/v1/bundles/{ref}")
    click.echo(f"deleted {row['name']}@{row['version']}")
