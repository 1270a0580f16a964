"""The agent's data directory: installed bundle versions and a `current` pointer per model.

Layout::

    <data_dir>/versions/<name>/<version>/   an unpacked, verified bundle (never modified after unpack)
    <data_dir>/versions/<name>/current      the active version, as text

The pointer is switched atomically (:func:`edgeml.fileio.write_atomic`: a temporary file, fsynced,
renamed over ``current``, the directory fsynced), so after a crash ``current`` names either the old or
the new version, never half of one. Several models live side by side.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeml.bundle.manifest import parse_semver
from edgeml.bundle.verify import VerifiedBundle, load_unpacked, read_header, unpack_bundle, verify_bundle
from edgeml.errors import BundleError, ConfigError
from edgeml.fileio import write_atomic

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
POINTER = "current"


class Store:
    def __init__(self, data_dir: str | Path, trusted: Mapping[str, Ed25519PublicKey]) -> None:
        self.root = Path(data_dir)
        self.trusted = trusted
        self.versions_dir = self.root / "versions"

    # -- queries -----------------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of the models that have a current version."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(p.name for p in self.versions_dir.iterdir() if (p / POINTER).is_file())

    def versions(self, name: str) -> list[str]:
        d = self.versions_dir / _checked(name)
        if not d.is_dir():
            return []
        found = [p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(found, key=parse_semver)

    def current(self, name: str) -> str | None:
        pointer = self.versions_dir / _checked(name) / POINTER
        try:
            version = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return version or None

    def path(self, name: str, version: str) -> Path:
        parse_semver(version)
        return self.versions_dir / _checked(name) / version

    def open(self, name: str, version: str | None = None) -> VerifiedBundle:
        """Re-verify an installed version (the current one by default) and return it."""
        version = version or self.current(name)
        if version is None:
            raise BundleError(f"model '{name}' is not installed in {self.root}")
        return load_unpacked(self.path(name, version), self.trusted)

    # -- changes -----------------------------------------------------------------------------------
    def install(self, bundle: str | Path, *, activate: bool = True) -> VerifiedBundle:
        """Verify and unpack a bundle under versions/<name>/<version>/; optionally make it current.

        Installing a version that is already there is a no-op if it is the same signed manifest, and an
        error if another bundle claims the same name and version.
        """
        if not self.trusted:
            raise ConfigError("no trusted keys are configured: add the builder's public key to trusted_keys")
        header = read_header(bundle)
        name, version = _checked(header.manifest.name), header.manifest.version
        dest = self.path(name, version)
        if dest.exists():
            # the archive itself must verify too: "already installed" is no excuse to accept a tampered file
            verify_bundle(bundle, self.trusted)
            existing = load_unpacked(dest, self.trusted)
            if existing.manifest.to_bytes() != header.manifest_bytes:
                raise BundleError(f"{name}@{version} is already installed from a different bundle; "
                                  "versions are immutable, build a new version")
            verified = existing
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                verified = unpack_bundle(bundle, dest, self.trusted)
            except BaseException:
                with contextlib.suppress(OSError):   # leave no empty model directory behind
                    dest.parent.rmdir()
                raise
        if activate:
            self.set_current(name, version)
        return verified

    def set_current(self, name: str, version: str) -> None:
        """Atomically point ``name`` at an installed ``version``."""
        target = self.path(name, version)
        if not target.is_dir():
            raise BundleError(f"{name}@{version} is not installed in {self.root}")
        write_atomic(target.parent / POINTER, version + "\n")

    def remove(self, name: str, version: str) -> None:
        if self.current(name) == version:
            raise BundleError(f"{name}@{version} is the current version; switch to another one first")
        shutil.rmtree(self.path(name, version), ignore_errors=True)


def _checked(name: str) -> str:
    if not _NAME.match(name):
        raise BundleError(f"model name {name!r} is not usable as a directory name (letters, digits, '.', '_', '-')")
    return name

