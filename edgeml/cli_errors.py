"""How edgeml's command lines (``edgeml``, ``edgeml-fleet``) end on an error edgeml raised on purpose."""

from __future__ import annotations

from typing import Any

import click

from edgeml.errors import EdgeMLError


class ErrorExitGroup(click.Group):
    """Prints an :class:`EdgeMLError` as one ``error: ...`` line on stderr, without a traceback, and exits
    with :meth:`exit_code` (subclasses map error classes to distinct codes)."""

    def exit_code(self, exc: EdgeMLError) -> int:
        return 1

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeMLError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(self.exit_code(exc))
