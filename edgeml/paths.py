"""Where edgeml keeps its files on a workstation: keys, trusted keys, caches, user target profiles.

Everything lives under one home directory so that a user (or a test) can move all of it with one
environment variable, ``EDGEML_HOME`` (default ``~/.edgeml``). The build cache can be moved on its own
with ``EDGEML_CACHE_DIR`` because it is large and disposable.
"""

from __future__ import annotations

import os
from pathlib import Path


def edgeml_home() -> Path:
    return Path(os.environ.get("EDGEML_HOME") or Path.home() / ".edgeml").expanduser()


def keys_dir() -> Path:
    """Private signing keys (files are written 0600)."""
    return edgeml_home() / "keys"


def trusted_keys_dir() -> Path:
    """Public keys whose signatures this machine accepts."""
    return edgeml_home() / "trusted"


def cache_dir() -> Path:
    """Build cache, downloaded test models, isolated toolchains."""
    env = os.environ.get("EDGEML_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgeml"


def user_target_dirs() -> list[Path]:
    """Directories searched for user target profiles, in order (later ones override earlier ones).

    ``EDGEML_TARGETS_PATH`` holds extra directories separated by ``os.pathsep``.
    """
    dirs = [edgeml_home() / "targets"]
    extra = os.environ.get("EDGEML_TARGETS_PATH", "")
    dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p]
    return dirs
