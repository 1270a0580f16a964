"""``edgeml-fleet bundles``: push, list, show and delete signed bundles in the registry; export a mirror."""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.fleet.cli.output import client, echo_json, json_option, show, table

BUNDLE_COLUMNS = [("name", "name"), ("version", "version"), ("target", "target"), ("runtime", "runtime"),
                  ("precision", "precision"), ("size", "bytes"), ("id", "sha256"), ("uploaded_at", "uploaded")]


@click.group()
def bundles() -> None:
    """Signed model bundles in the registry."""


@bundles.command("push")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
def bundles_push(bundle: Path, as_json: bool) -> None:
    with client() as fleet:
        pushed = fleet.push_bundle(bundle)
    if as_json:
        echo_json(pushed.raw)
    else:
        click.echo(f"pushed {pushed.ref} ({pushed.size} bytes, sha256 {pushed.id})")


@bundles.command("list")
@click.option("--name", default=None)
@json_option
def bundles_list(name: str | None, as_json: bool) -> None:
    with client() as fleet:
        rows = [b.raw for b in fleet.list_bundles(name)]
    table(rows, BUNDLE_COLUMNS, "bundles", as_json)


@bundles.command("show")
@click.argument("ref")
@json_option
def bundles_show(ref: str, as_json: bool) -> None:
    """REF is a sha256 id or name@version."""
    with client() as fleet:
        doc = fleet.get_bundle(ref).raw
    if not as_json:
        doc = {k: v for k, v in doc.items() if k != "manifest"} | {"inputs": doc["manifest"].get("inputs"),
                                                                   "outputs": doc["manifest"].get("outputs")}
    show(doc, as_json)


@bundles.command("delete")
@click.argument("ref")
def bundles_delete(ref: str) -> None:
    with client() as fleet:
        deleted = fleet.delete_bundle(ref)
    click.echo(f"deleted {deleted.ref}")


@bundles.command("export-mirror")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default=None, help="only the bundles of this model")
def bundles_export_mirror(directory: Path, name: str | None) -> None:
    """Write every bundle as DIRECTORY/<name>/<version>.edgepkg, the layout 'serve --bundle-mirror' points
    devices at: serve DIRECTORY with any static web server or copy it to an object store. Files already
    there with the right sha256 are kept, so running it again copies only new bundles."""
    from edgeml.fileio import sha256_file
    from edgeml.fleet.bundle_links import mirror_path

    copied = kept = 0
    with client() as fleet:
        for row in fleet.list_bundles(name):
            dest = directory / mirror_path(row.name, row.version)
            if dest.is_file() and sha256_file(dest) == row.id:
                kept += 1
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            got = fleet.download_bundle(row.id, dest)
            if got != row.id:
                dest.unlink(missing_ok=True)
                raise click.ClickException(f"{row.ref} arrived with sha256 {got}, not {row.id}")
            copied += 1
    click.echo(f"mirror {directory}: {copied} bundle(s) written, {kept} already there")
