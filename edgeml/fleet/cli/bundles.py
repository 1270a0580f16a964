"""``edgeml-fleet bundles``: push, list, show and delete signed bundles in the registry; export a mirror."""

from __future__ import annotations

from pathlib import Path

import click

from edgeml.fleet.cli.output import call, client, echo_json, json_option, show, table

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
        for row in fleet.get("/v1/bundles", name=name):
            dest = directory / mirror_path(row["name"], row["version"])
            if dest.is_file() and sha256_file(dest) == row["id"]:
                kept += 1
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            got = fleet.download(f"/v1/bundles/{row['id']}/download", dest)
            if got != row["id"]:
                dest.unlink(missing_ok=True)
                raise click.ClickException(f"{row['name']}@{row['version']} arrived with sha256 {got}, not {row['id']}")
            copied += 1
    click.echo(f"mirror {directory}: {copied} bundle(s) written, {kept} already there")
