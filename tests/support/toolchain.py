"""The TFLite converter toolchain for tests: installed once into a persistent directory.

conftest.py points EDGEML_CACHE_DIR at a per-session temp directory, which would reinstall the ≈2.6 GB
toolchain on every run. Toolchains therefore follow EDGEML_TOOLCHAINS_DIR, which this fixture sets
(unless the caller did) to the user's default cache, ``~/.cache/edgeml/toolchains``: CI reuses it
between runs on the same machine, and a fresh machine installs it here on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeml.toolchains import Toolchain, find, install


def default_toolchains_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgeml" / "toolchains"


@pytest.fixture(scope="session")
def tflite_toolchain() -> Toolchain:
    """The installed toolchain (installing it on first use). The variable is set only while looking it
    up: tests that convert pin it with :func:`pinned_toolchains_dir`, so other tests never see it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("EDGEML_TOOLCHAINS_DIR", os.environ.get("EDGEML_TOOLCHAINS_DIR") or str(default_toolchains_dir()))
    try:
        return find("tflite") or install("tflite", log=print)
    finally:
        patch.undo()


def pinned_toolchains_dir(monkeypatch: pytest.MonkeyPatch, toolchain: Toolchain) -> None:
    """Keep the toolchain visible in a test whose autouse fixtures reset the environment."""
    monkeypatch.setenv("EDGEML_TOOLCHAINS_DIR", str(toolchain.root.parent))


@pytest.fixture(scope="session")
def torch_toolchain() -> Toolchain:
    """The torch exporter toolchain (torch 2.13.0 CPU, onnxscript, transformers), installed on first use
    into the same persistent directory as the TFLite one (≈1.1 GB, about a minute from the local wheel)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("EDGEML_TOOLCHAINS_DIR", os.environ.get("EDGEML_TOOLCHAINS_DIR") or str(default_toolchains_dir()))
    try:
        return find("torch") or install("torch", log=print)
    finally:
        patch.undo()


def user_python_with_torch(directory: Path, torch_toolchain: Toolchain) -> Path:
    """A Python like a PyTorch user's: torch (from the toolchain) and this test run's edgeml with its
    dependencies, in one process; the test suite's own environment stays torch-free.

    A bare venv whose ``.pth`` adds the toolchain's site-packages first and then this process's (their
    numpy/onnx/protobuf pins are the same), through ``site.addsitedir`` so an editable edgeml's finder
    works. Subprocesses edgeml starts (the benchmark) use the same interpreter and see the same."""
    import subprocess
    import sys

    env_dir = directory / "user-env"
    if not (env_dir / "bin" / "python").exists():
        subprocess.run([str(torch_toolchain.python), "-m", "venv", "--without-pip", str(env_dir)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_dirs = [str(torch_toolchain.root / "lib" / version / "site-packages"),
                 *(p for p in sys.path if p.endswith("site-packages"))]
    line = "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in site_dirs)
    (env_dir / "lib" / version / "site-packages" / "edgeml_test_paths.pth").write_text(line + "\n")
    return env_dir / "bin" / "python"
