"""Where a desired state tells a device to fetch a bundle: a mirror (any static server or object store)
when the operator configured one, the fleet's own download route otherwise and as the fallback.

A mirror needs no credentials and no trust: the desired state is signed by the fleet key and carries
the bundle's sha256 and size (and those of its tar stream, for devices that rebuild it from a delta),
so a device refuses any other bytes whatever server sent them. The mirror's layout is
``<mirror>/<name>/<version>.edgepkg``, what ``edgeml-fleet bundles export-mirror DIR`` writes.

The links are server configuration (``edgeml-fleet serve --bundle-mirror``), set once at start-up with
:func:`configure` and read wherever desired states are signed; every server process of a fleet must be
started with the same mirror.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from edgeml.errors import ConfigError
from edgeml.fleet.artifacts import ArtifactStore
from edgeml.fleet.store.models import Bundle


def fleet_path(bundle_id: str) -> str:
    """The fleet's own download route, relative to the URL the device enrolled with."""
    return f"/v1/bundles/{bundle_id}/download"


def mirror_path(name: str, version: str) -> str:
    """A bundle's path below the mirror's base URL (and below an ``export-mirror`` directory)."""
    return f"{quote(name, safe='')}/{quote(version, safe='')}.edgepkg"


def check_mirror(url: str) -> str:
    """The mirror's base URL, normalised to end with '/'; refuses what a device could not download from."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"bundle mirror {url!r} is not an http(s):// base URL (e.g. https://cdn.example/edgeml/)")
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class BundleLinks:
    mirror: str | None = None
    artifacts: ArtifactStore | None = None    # where the tar-stream digests are computed and kept

    def entry_fields(self, bundle: Bundle) -> dict[str, Any]:
        """The ``url`` (and ``fleet_url``, ``tar_sha256``, ``tar_size``) fields of a desired-state entry."""
        fields: dict[str, Any] = {"url": fleet_path(bundle.id)}
        if self.mirror:
            fields = {"url": self.mirror + mirror_path(bundle.name, bundle.version), "fleet_url": fleet_path(bundle.id)}
        tar = self.artifacts.tar_info(bundle.id) if self.artifacts is not None else None
        if tar is not None:
            fields.update(tar_sha256=tar.sha256, tar_size=tar.size)
        return fields


_links = BundleLinks()


def configure(links: BundleLinks) -> None:
    global _links
    _links = BundleLinks(check_mirror(links.mirror) if links.mirror else None, links.artifacts)


def current() -> BundleLinks:
    return _links
