"""Tables for the three command lines: rich on a terminal wide enough for them, plain aligned text elsewhere.

Piped into a file or a CI log, rich squeezes a wide table to 80 columns and wraps each value into
narrow cells ("onnxr / untim / e/fp3 / 2"), which nobody can read or grep. So a table is drawn with rich
only when stdout is a terminal that fits it whole; otherwise each row is one line of left-aligned
columns, every value in full. Commands that print tables also take ``--json`` (see :func:`print_json`)
for scripts; the table is for people.

Rich is imported only when a table is drawn with it, so importing this module costs nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

GAP = "  "
# rich's box-drawn table: a border on each side of every column plus one space of padding each side
_RICH_BORDER_PER_COLUMN = 3
_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")


@dataclass(frozen=True)
class Table:
    """A titled grid of already formatted cells (build one with :meth:`from_records` for JSON records)."""

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]] = field(default_factory=list)

    @classmethod
    def from_records(cls, title: str, records: Sequence[Mapping[str, Any]],
                     columns: Sequence[tuple[str, str]]) -> Table:
        """One row per record; ``columns`` are (record key, header) pairs, values through :func:`cell`."""
        return cls(title, [header for _, header in columns],
                   [[cell(record.get(key)) for key, _ in columns] for record in records])

    def widths(self) -> list[int]:
        return [max([len(h), *(len(row[i]) for row in self.rows)]) for i, h in enumerate(self.headers)]


def cell(value: Any) -> str:
    """One value as table text: times to the second, lists and dicts compact, None as '-', one line."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(cell, value))
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, str) and (m := _ISO_TIME.match(value)):
        return f"{m.group(1)} {m.group(2)}"
    return " ".join(str(value).splitlines())


def plain(table: Table) -> str:
    """Title, header, a rule and one line per row; columns padded, values never cut or wrapped."""
    widths = table.widths()

    def line(values: Sequence[str]) -> str:
        cells = (" ".join(v.splitlines()).ljust(w) for v, w in zip(values, widths, strict=True))
        return GAP.join(cells).rstrip()

    lines = [table.title] if table.title else []
    lines += [line(table.headers), line(["-" * w for w in widths]), *(line(row) for row in table.rows)]
    return "\n".join(lines)


def rich_width(table: Table) -> int:
    """Columns rich needs to draw ``table`` with borders and no value wrapped."""
    return sum(table.widths()) + _RICH_BORDER_PER_COLUMN * len(table.headers) + 1


def terminal_fits(stream: IO[str], needed: int) -> bool:
    """True when ``stream`` is a terminal at least ``needed`` columns wide (COLUMNS overrides the size)."""
    isatty = getattr(stream, "isatty", None)
    if not callable(isatty) or not isatty():
        return False
    return shutil.get_terminal_size().columns >= needed


def print_table(table: Table, stream: IO[str] | None = None) -> None:
    """Draw ``table`` with rich where it fits a terminal whole, else as :func:`plain` text."""
    out = stream if stream is not None else sys.stdout
    needed = rich_width(table)
    if not terminal_fits(out, needed):
        out.write(plain(table) + "\n")
        return
    from rich.console import Console
    from rich.table import Table as RichTable

    drawn = RichTable(title=table.title or None)
    for header in table.headers:
        drawn.add_column(header, no_wrap=True)
    for row in table.rows:
        drawn.add_row(*row)
    # markup off: a value such as "[int8]" is data, not a style tag
    Console(file=out, width=shutil.get_terminal_size().columns, markup=False, emoji=False).print(drawn)


def print_json(data: Any, stream: IO[str] | None = None, *, sort_keys: bool = True) -> None:
    """``--json`` output: indented, anything not JSON (paths, times) as its string."""
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")
