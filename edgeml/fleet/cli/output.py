"""What every ``edgeml-fleet`` command group shares: the fleet client, ``--json`` and how results print.

Group modules import this one and nothing of each other or of the root group (``edgeml.fleet.cli``),
so the command modules form a tree: root → groups → output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

from edgeml.cli_tables import Table, cell, print_json, print_table
from edgeml.fleet.client import Client, ClientConfig

json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


def client(config: ClientConfig | None = None) -> Client:
    """The :class:`~edgeml.fleet.Client` for ``config``, by default the server saved by ``edgeml-fleet login``
    (or EDGEML_FLEET_URL/EDGEML_FLEET_TOKEN). Commands call its typed methods; CLI tests patch ``Client`` here."""
    return Client.from_config(config) if config is not None else Client()


def echo_json(data: Any) -> None:
    """The server's JSON as it sent it (keys in its order), for ``--json``."""
    print_json(data, sort_keys=False)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], title: str,
          as_json: bool) -> None:
    """``rows`` as a table of ``columns`` ((key, header) pairs), or all of each row as JSON."""
    if as_json:
        echo_json(list(rows))
        return
    print_table(Table.from_records(title, rows, columns))


def show(doc: Mapping[str, Any], as_json: bool) -> None:
    """One record as ``key  value`` lines (nested objects as indented JSON), or as JSON."""
    if as_json:
        echo_json(doc)
        return
    width = max(len(k) for k in doc) if doc else 0
    for key, value in doc.items():
        text = json.dumps(value, indent=2) if isinstance(value, dict) else cell(value)
        click.echo(f"{key:<{width}}  {text}")
