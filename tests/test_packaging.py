"""The distribution ships every package and the target profiles, and `import edgeml` stays cheap."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import edgeml

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[set[str], dict[str, str]]:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(tool["packages"]), tool["package-dir"]


def _source_dir(package: str, package_dir: dict[str, str]) -> Path:
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[i:])
    return ROOT / Path(*parts)


def test_every_python_package_directory_is_declared() -> None:
    declared, package_dir = _declared()
    found = set()
    for top, src in (("edgeml", ROOT / "edgeml"), ("edgeml_agent", ROOT / "agent" / "edgeml_agent")):
        for init in src.rglob("__init__.py"):
            rel = init.parent.relative_to(src)
            found.add(".".join((top, *rel.parts)))
    missing = found - declared
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    for package in declared:
        assert _source_dir(package, package_dir).is_dir(), f"{package} is declared but has no directory"


def test_importing_edgeml_does_not_import_vendor_sdks() -> None:
    code = (
        "import sys, edgeml, edgeml.bundle, edgeml.targets, edgeml.runtimes; "
        "heavy = [m for m in ('onnx', 'onnxruntime', 'openvino', 'nncf', 'ai_edge_litert', 'fastapi', "
        "'sqlalchemy', 'torch', 'tensorflow') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_is_pinned() -> None:
    assert edgeml.__all__ == ["EdgeMLError", "__version__", "compile", "load"]
