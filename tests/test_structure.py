"""The shape of the code base, checked so that it stays easy to change (issue: typed seams).

- no import cycle between product modules, counting imports inside functions too (a lazy import hides a
  cycle from Python but not from a reader, and it is what makes two modules impossible to change apart);
- no function over 60 lines in the product (generated migrations aside);
- ruff and mypy clean with the project's own configuration (E501 and ``disallow_any_explicit`` included).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOTS = {"edgeml": ROOT / "edgeml", "edgeml_agent": ROOT / "agent" / "edgeml_agent"}
MAX_FUNCTION_LINES = 60


def _product_modules() -> dict[str, Path]:
    modules = {}
    for package, root in PACKAGE_ROOTS.items():
        for path in root.rglob("*.py"):
            parts = (package, *path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or inside functions, except ``if TYPE_CHECKING:`` ones."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            stack.append(child)


def _resolve(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph() -> dict[str, set[str]]:
    modules = _product_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, node, path.name == "__init__.py")
                # `from pkg import sub` imports the submodule when one exists, else a name from pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_sees_a_cycle_through_a_function_level_import() -> None:
    # given a graph where a -> b at module level and b -> a inside a function (as import_graph builds it)
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_imports_are_edges() -> None:
    tree = ast.parse("import x\ndef f():\n    from y import z\nif TYPE_CHECKING:\n    import t\n")
    names = [ast.unparse(n) for n in _imports(tree)]
    assert sorted(names) == ["from y import z", "import x"]


def test_no_import_cycle_in_the_product() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles (module- and function-level imports): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def _functions(path: Path) -> Iterator[tuple[str, int]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", node.end_lineno - node.lineno + 1


def test_no_function_over_60_lines() -> None:
    long = [
        f"{where} ({lines} lines)"
        for path in _product_modules().values()
        if "migrations" not in path.parts
        for where, lines in _functions(path)
        if lines > MAX_FUNCTION_LINES
    ]
    assert long == [], "split these functions: " + ", ".join(long)


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPY_CACHE_DIR": str(Path.home() / ".cache" / "edgeml-mypy")}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          check=False, timeout=900)


def test_ruff_clean() -> None:
    result = _tool("ruff", "check", "--no-cache", "edgeml", "agent", "tests", "scripts", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    result = _tool("mypy")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
