"""The table helper of all three programs: rich on a terminal that fits the table, plain rows elsewhere."""

from __future__ import annotations

import io

import pytest

from edgeml.cli_tables import Table, cell, plain, print_table, rich_width

LONG = "onnxruntime/fp32 with a note far too long for any eighty-column terminal to hold in one narrow cell"
TABLE = Table("build m.onnx for x86-cpu", ("candidate", "status", "note"),
              [["* onnxruntime/fp32", "passed", LONG],
               ["  onnxruntime/int8", "failed (fidelity)", "agreement 0.91"]])


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal (its width comes from COLUMNS)."""

    def isatty(self) -> bool:
        return True


def lines_with(text: str, *values: str) -> list[str]:
    return [line for line in text.splitlines() if all(v in line for v in values)]


def test_piped_output_is_one_line_per_row_with_every_value_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a table far wider than the 80 columns a pipe is assumed to have
    monkeypatch.setenv("COLUMNS", "80")
    out = io.StringIO()
    # when it is printed to something that is not a terminal
    print_table(TABLE, out)
    text = out.getvalue()
    # then each row is one line holding its full values, and the columns line up under the headers
    assert text.splitlines()[0] == "build m.onnx for x86-cpu"
    header = text.splitlines()[1]
    (first,) = lines_with(text, "* onnxruntime/fp32", "passed", LONG)
    (second,) = lines_with(text, "onnxruntime/int8", "failed (fidelity)", "agreement 0.91")
    assert first.index("passed") == second.index("failed") == header.index("status")
    assert first.index(LONG) == second.index("agreement 0.91") == header.index("note")
    assert "│" not in text and "┃" not in text  # no box drawing in logs
    assert len(text.splitlines()) == 2 + 1 + 2  # title, header, rule, two rows


def test_a_terminal_wide_enough_gets_the_rich_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(rich_width(TABLE)))
    out = Terminal()
    print_table(TABLE, out)
    text = out.getvalue()
    assert "│" in text
    assert lines_with(text, "* onnxruntime/fp32", "passed", LONG)  # drawn whole, not folded into cells


def test_a_terminal_too_narrow_for_the_table_gets_plain_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(rich_width(TABLE) - 1))
    out = Terminal()
    print_table(TABLE, out)
    assert out.getvalue() == plain(TABLE) + "\n"


def test_cells_are_single_line_and_compact() -> None:
    assert cell(None) == "-" and cell(True) == "yes" and cell(["a", "b"]) == "a, b"
    assert cell({"wave": 1, "reasons": ["slow", None]}) == "wave=1 reasons=slow, -"
    assert cell("2026-11-30T13:20:35.123456+00:00") == "2026-11-30 13:20:35"
    assert cell("error:\nline two") == "error: line two"
    # a value in a row that still holds a newline does not break the row in two
    text = plain(Table("", ("a", "b"), [["x\ny", "z"]]))
    assert text.splitlines()[-1] == "x y  z"
