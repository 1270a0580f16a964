"""The attacker's checklist in tests/security/README.md names only tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _indexed() -> list[tuple[str, str]]:
    return NODE.findall((Path(__file__).parent / "README.md").read_text())


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_test_named_in_the_index_exists() -> None:
    rows = _indexed()
    assert len(rows) >= 30, "the index table lost its rows (or its `path::test` format)"
    missing = [f"{path}::{name}" for path, name in rows
               if not (ROOT / path).is_file() or name not in _test_functions(ROOT / path)]
    assert missing == [], f"tests/security/README.md names tests that do not exist: {missing}"
