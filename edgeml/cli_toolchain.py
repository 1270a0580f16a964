"""``edgeml toolchain``: install, list and remove isolated toolchains (the ONNX -> TFLite converter).

Registered on the main CLI with ``main.add_command(toolchain)``; errors are EdgeMLErrors, which the
main group prints as one line with its exit code.
"""

from __future__ import annotations

import json
from typing import Any

import click

from edgeml.toolchains import RECIPES, install, installed, is_current, remove, toolchains_dir


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@click.group()
def toolchain() -> None:
    """Isolated toolchains (each its own virtual environment under the edgeml cache directory)."""


@toolchain.command("install")
@click.argument("name", type=click.Choice(sorted(RECIPES)))
@click.option("--force", is_flag=True, help="Reinstall even when a current install exists.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the result, not pip's output.")
def toolchain_install(name: str, force: bool, quiet: bool) -> None:
    """Create the NAME toolchain (pinned versions; a changed recipe reinstalls on its own)."""
    recipe = RECIPES[name]
    click.echo(f"toolchain {name}: {recipe.description}", err=True)
    click.echo(f"location: {toolchains_dir() / name}", err=True)
    tc = install(name, force=force, log=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    versions = ", ".join(f"{k} {v}" for k, v in tc.versions.items())
    click.echo(f"{name} ready in {tc.root} ({_size(tc.size_bytes)}): {versions}")


@toolchain.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys) instead of text.")
def toolchain_list(as_json: bool) -> None:
    """Installed toolchains with their size, versions and whether they match the current recipe."""
    rows: list[dict[str, Any]] = [
        {"name": tc.name, "path": str(tc.root), "size_bytes": tc.size_bytes, "current": is_current(tc),
         "versions": tc.versions, "installed_at": tc.marker.get("installed_at")} for tc in installed()]
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo(f"no toolchains installed in {toolchains_dir()}; available: {', '.join(sorted(RECIPES))} "
                   f"(edgeml toolchain install NAME)")
        return
    for row in rows:
        state = "current" if row["current"] else "OUTDATED (run: edgeml toolchain install " + row["name"] + ")"
        click.echo(f"{row['name']:8} {_size(row['size_bytes']):>10}  {state}  {row['path']}")
        for dist, version in sorted(row["versions"].items()):
            click.echo(f"         {dist} {version}")


@toolchain.command("remove")
@click.argument("name", type=click.Choice(sorted(RECIPES)))
def toolchain_remove(name: str) -> None:
    """Delete the NAME toolchain's directory."""
    click.echo(f"removed {toolchains_dir() / name}" if remove(name) else f"{name} is not installed")
