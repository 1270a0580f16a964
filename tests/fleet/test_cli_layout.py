"""``edgeml-fleet`` is one module per command group: the root registers the groups, the groups share
``output`` and import neither the root nor each other (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import click

import edgeml.fleet.cli as root

PACKAGE = Path(root.__file__).parent
NOT_GROUPS = ("__init__", "__main__", "output")
GROUP_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in NOT_GROUPS)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (module level, in functions, under TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add("." * node.level + node.module)
    return found


def is_cli(module: str) -> bool:
    return module == "edgeml.fleet.cli" or module.startswith(("edgeml.fleet.cli.", "."))


def test_group_modules_import_only_the_shared_output_module_of_the_cli() -> None:
    assert GROUP_MODULES, "no command group modules found"
    for name in [*GROUP_MODULES, "output"]:
        cli_imports = {m for m in imported_modules(PACKAGE / f"{name}.py") if is_cli(m)}
        allowed = set() if name == "output" else {"edgeml.fleet.cli.output"}
        assert cli_imports <= allowed, f"{name}.py imports {sorted(cli_imports - allowed)}"


def test_every_command_of_every_group_module_is_registered_on_the_root() -> None:
    registered = set(root.main.commands.values())
    for name in GROUP_MODULES:
        module = getattr(root, name)
        defined = [v for v in vars(module).values() if isinstance(v, click.Command)]
        # the commands at the top of the module: those not inside one of its groups
        nested = {c for g in defined if isinstance(g, click.Group) for c in g.commands.values()}
        commands = set(defined) - nested
        assert commands, f"{name}.py defines no command"
        missing = sorted(c.name or "" for c in commands - registered)
        assert not missing, f"{name}.py: {missing} not registered on the root group"
