"""``edgeml-fleet tokens`` (API tokens for people) and ``enroll-token`` (one-time tokens for devices)."""

from __future__ import annotations

import click

from edgeml.fleet.cli.output import client, echo_json, json_option, table

TOKEN_COLUMNS = [("id", "id"), ("name", "name"), ("role", "role"), ("created_at", "created"),
                 ("expires_at", "expires"), ("revoked_at", "revoked")]


@click.group()
def tokens() -> None:
    """API tokens for people (admin only)."""


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "deployer", "admin"]), required=True)
@click.option("--expires-in", type=int, default=None, help="lifetime in seconds (default: no expiry)")
@json_option
def tokens_create(name: str, role: str, expires_in: int | None, as_json: bool) -> None:
    with client() as fleet:
        created = fleet.create_token(name, role, expires_in)
    if as_json:
        echo_json(created)
    else:
        click.echo(created["token"])
        click.echo(f"token {created['id']} ({role}) created; the secret above is shown once", err=True)


@tokens.command("list")
@json_option
def tokens_list(as_json: bool) -> None:
    with client() as fleet:
        rows = fleet.list_tokens()
    table(rows, TOKEN_COLUMNS, "API tokens", as_json)


@tokens.command("revoke")
@click.argument("token_id")
def tokens_revoke(token_id: str) -> None:
    with client() as fleet:
        row = fleet.revoke_token(token_id)
    click.echo(f"revoked token {row['id']} ({row['name']})")


@click.group("enroll-token")
def enroll_token() -> None:
    """One-time tokens that let a device enrol."""


@enroll_token.command("create")
@click.option("--group", default=None)
@click.option("--tag", "tags", multiple=True, help="tag the device gets (repeatable)")
@click.option("--expires-in", type=int, default=3600, show_default=True, help="seconds")
@json_option
def enroll_token_create(group: str | None, tags: tuple[str, ...], expires_in: int, as_json: bool) -> None:
    with client() as fleet:
        row = fleet.create_enrollment_token(group=group, tags=tags, expires_in_s=expires_in)
    if as_json:
        echo_json(row)
    else:
        click.echo(row["token"])
        click.echo(f"one-time enrolment token, expires {row['expires_at']}; on the device: "
                   f"edgeml-agent enroll --server URL --token <token>", err=True)
