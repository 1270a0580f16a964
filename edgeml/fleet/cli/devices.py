"""``edgeml-fleet devices``: list, show, tag and revoke enrolled devices."""

from __future__ import annotations

import itertools
from typing import Any

import click

from edgeml.fleet.cli.output import call, client, json_option, show, table

DEVICE_COLUMNS = [("id", "id"), ("name", "name"), ("group", "group"), ("tags", "tags"), ("online", "online"),
                  ("last_seen", "last seen"), ("revoked", "revoked")]


@click.group()
def devices() -> None:
    """Enrolled devices."""


@devices.command("list")
@click.option("--group", default=None)
@click.option("--tag", default=None)
@click.option("--online/--offline", default=None)
@click.option("--include-revoked", is_flag=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="show at most this many (default: all)")
@json_option
def devices_list(group: str | None, tag: str | None, online: bool | None, include_revoked: bool, limit: int | None,
                 as_json: bool) -> None:
    """Enrolled devices, in enrolment order (read from the server page by page)."""
    with client() as fleet:
        pages = fleet.pages("/v1/devices", limit=min(limit or 500, 500), group=group, tag=tag, online=online,
                            include_revoked=include_revoked or None)
        rows = list(itertools.islice(pages, limit))
    table(rows, DEVICE_COLUMNS, "devices", as_json)


@devices.command("show")
@click.argument("device_id")
@json_option
def devices_show(device_id: str, as_json: bool) -> None:
    show(call("get", f"/v1/devices/{device_id}"), as_json)


@devices.command("tag")
@click.argument("device_id")
@click.option("--add", "add", multiple=True, help="tag to add (repeatable)")
@click.option("--remove", "remove", multiple=True, help="tag to remove (repeatable)")
@click.option("--group", default=None, help="move to this group ('' removes it from its group)")
@json_option
def devices_tag(device_id: str, add: tuple[str, ...], remove: tuple[str, ...], group: str | None,
                as_json: bool) -> None:
    body: dict[str, Any] = {"add_tags": list(add), "remove_tags": list(remove)}
    if group is not None:
        body["group"] = group
    show(call("patch", f"/v1/devices/{device_id}", body), as_json)


@devices.command("revoke")
@click.argument("device_id")
def devices_revoke(device_id: str) -> None:
    row = call("post", f"/v1/devices/{device_id}/revoke")
    click.echo(f"revoked device {row['id']}: its API token and broker login no longer work")
