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
