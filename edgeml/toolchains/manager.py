"""Install, find and run isolated toolchains: one virtual environment per recipe.

Layout: ``toolchains_dir()/<name>/`` is a plain venv plus ``edgeml-toolchain.json``, the marker. The
marker is written last, after the install and a smoke import succeeded, so a directory without a marker
(or with another recipe's hash) is an interrupted or outdated install and is rebuilt, never used.

``toolchains_dir()`` is ``$EDGEML_TOOLCHAINS_DIR`` when set, else ``<edgeml cache dir>/toolchains``.
The separate variable exists because a toolchain is large (0.5-2.6 GB) and slow to build: tests and CI
point it at a persistent place while the per-test build cache stays disposable.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeml.errors import ToolchainError
from edgeml.fileio import write_atomic
from edgeml.paths import cache_dir
from edgeml.toolchains.recipes import RECIPES, Recipe

MARKER = "edgeml-toolchain.json"


def toolchains_dir() -> Path:
    env = os.environ.get("EDGEML_TOOLCHAINS_DIR")
    return Path(env).expanduser() if env else cache_dir() / "toolchains"


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ToolchainError(f"unknown toolchain '{name}'; known: {', '.join(sorted(RECIPES))}") from None


def install_command(name: str) -> str:
    return f"edgeml toolchain install {name}"


@dataclass(frozen=True)
class Toolchain:
    """An installed toolchain: where it is and what its marker says."""

    name: str
    root: Path
    marker: Mapping[str, Any]

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin_dir / "python"

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.marker.get("versions", {}))

    @property
    def size_bytes(self) -> int:
        return int(self.marker.get("size_bytes", 0))

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess inside the toolchain.

        bin/ goes first on PATH because onnx2tf shells out to ``onnxsim``: without it on PATH the
        simplification step is skipped silently and conversions of real models fail later on.
        PYTHONPATH/PYTHONHOME are dropped so edgeml's own site-packages (numpy 2) cannot leak in.
        """
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(self.root)
        env["PYTHONNOUSERSITE"] = "1"
        env.update(extra or {})
        return env

    def run(self, args: Sequence[str], *, cwd: Path, timeout: float | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (a console script of the toolchain first) with the toolchain's environment."""
        exe = self.bin_dir / args[0]
        if not exe.exists():
            raise ToolchainError(
                f"toolchain '{self.name}' has no '{args[0]}' in {self.bin_dir}; "
                f"reinstall it with: {install_command(self.name)} --force"
            )
        return subprocess.run(
            [str(exe), *args[1:]], cwd=cwd, env=self.env(env), capture_output=True, text=True,
            timeout=timeout, check=False,
        )


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find(name: str) -> Toolchain | None:
    """The installed toolchain ``name`` if its marker matches the current recipe, else None."""
    recipe = get_recipe(name)
    root = toolchains_dir() / name
    marker = _read_marker(root)
    if marker is None or marker.get("recipe_hash") != recipe.hash() or not (root / "bin" / "python").exists():
        return None
    return Toolchain(name, root, marker)


def require(name: str, purpose: str = "") -> Toolchain:
    """The installed toolchain, or a :class:`ToolchainError` that says how to install it."""
    found = find(name)
    if found is not None:
        return found
    root = toolchains_dir() / name
    why = f" (needed for {purpose})" if purpose else ""
    state = "is outdated (its recipe changed)" if (root / MARKER).exists() else "is not installed"
    raise ToolchainError(
        f"the '{name}' toolchain{why} {state} in {root}. Install it with: {install_command(name)} "
        f"(a one-time {get_recipe(name).size_hint} install into an isolated environment; set "
        f"EDGEML_TOOLCHAINS_DIR to put it elsewhere)"
    )


def installed() -> list[Toolchain]:
    """Every toolchain directory with a marker, current or outdated (``list`` shows which)."""
    base = toolchains_dir()
    out = []
    for name in sorted(RECIPES):
        marker = _read_marker(base / name)
        if marker is not None:
            out.append(Toolchain(name, base / name, marker))
    return out


def is_current(tc: Toolchain) -> bool:
    return tc.marker.get("recipe_hash") == get_recipe(tc.name).hash()


@contextmanager
def _lock(base: Path, name: str) -> Iterator[None]:
    """One installer per toolchain at a time (two CI jobs, or a test and a user, on one cache)."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _dir_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


_VERSIONS_SCRIPT = """
import json, sys
from importlib import metadata
out = {}
for dist in sys.argv[1:]:
    try:
        out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(out))
"""


def install(name: str, *, force: bool = False, python: str | None = None,
            log: Callable[[str], None] = lambda line: None, timeout: float = 3600) -> Toolchain:
    """Create (or recreate) the toolchain's venv and pip-install its pinned recipe.

    Returns at once when a current install exists and ``force`` is false. pip honours its usual
    configuration (PIP_INDEX_URL, PIP_FIND_LINKS, pip.conf), so an air-gapped site installs from a
    local wheelhouse the same way.
    """
    recipe = get_recipe(name)
    base = toolchains_dir()
    with _lock(base, name):
        if not force:
            current = find(name)
            if current is not None:
                return current
        root = base / name
        if root.exists():
            log(f"removing the previous '{name}' toolchain in {root}")
            shutil.rmtree(root)
        started = time.monotonic()
        interpreter = python or sys.executable
        # a recipe without packages needs no pip in its venv (seeding pip is most of venv's cost)
        venv_args = [] if recipe.packages else ["--without-pip"]
        _step(log, [interpreter, "-m", "venv", *venv_args, str(root)], "creating the virtual environment", timeout)
        py = str(root / "bin" / "python")
        if recipe.packages:
            _step(log, [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                        *recipe.packages], f"pip install {' '.join(recipe.packages)}", timeout)
        for script in recipe.entry_points:
            if not (root / "bin" / script).exists():
                raise ToolchainError(f"installing toolchain '{name}' did not create bin/{script} in {root}")
        probe = subprocess.run([py, "-c", _VERSIONS_SCRIPT, *recipe.report], capture_output=True,
                               text=True, timeout=120, check=False)
        if probe.returncode != 0:
            raise ToolchainError(f"toolchain '{name}' installed but its Python does not start:\n{probe.stderr}")
        marker = {
            "name": name,
            "recipe_hash": recipe.hash(),
            "packages": list(recipe.packages),
            "versions": json.loads(probe.stdout),
            "python": subprocess.run([py, "-c", "import sys; print(sys.version.split()[0])"],
                                     capture_output=True, text=True, check=False).stdout.strip(),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "install_seconds": round(time.monotonic() - started, 1),
            "size_bytes": _dir_size(root),
        }
        # Written last and atomically: its presence is what makes the directory a usable toolchain.
        write_atomic(root / MARKER, json.dumps(marker, indent=2))
        log(f"installed toolchain '{name}' in {root} ({marker['install_seconds']} s)")
        return Toolchain(name, root, marker)


def _step(log: Callable[[str], None], cmd: list[str], what: str, timeout: float) -> None:
    log(what)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    # A watchdog rather than a check per output line: a pip stuck on a dead index prints nothing.
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    tail: list[str] = []
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-40:], line]
            log(line)
        rc = proc.wait()
    finally:
        watchdog.cancel()
    if rc != 0:
        joined = "\n".join(tail)
        raise ToolchainError(f"{what} failed (exit {rc}):\n{joined}")


def remove(name: str) -> bool:
    """Delete the toolchain's directory; False when there was nothing to delete."""
    get_recipe(name)
    root = toolchains_dir() / name
    with _lock(toolchains_dir(), name):
        if not root.exists():
            return False
        shutil.rmtree(root)
        return True
