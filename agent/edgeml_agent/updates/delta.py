"""Delta updates on the device: rebuild the new bundle from the installed one and a small download.

The agent keeps the file of each model's committed bundle under ``<updates>/installed/<name>/<version>
.edgepkg`` (:func:`keep_installed`). For an update it first asks the fleet for
``/v1/bundles/<name>@<version>/delta?from=<installed version>`` and rebuilds the new bundle's tar stream
(:func:`edgeml.bundle.delta.apply_delta`). The result must have the sha256 and size the **signed
desired state** gives for the tar stream (``tar_sha256``/``tar_size``) before it is written where a full
download would land; the verifying state then checks its signature and every file hash as for any
bundle. Whatever goes wrong (no delta, installed file missing or changed, a delta over the size cap, a
result with another hash) ends in :class:`DeltaUnavailable` and the caller downloads the full bundle.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from edgeml.bundle.delta import MAX_DELTA_INPUT_BYTES, DeltaError, apply_delta, tar_stream
from edgeml.bundle.manifest import parse_semver
from edgeml.desired import DesiredModel
from edgeml.errors import EdgeMLError, UpdateError
from edgeml.fileio import write_atomic
from edgeml_agent.transport import HttpClient, HttpUnreachable

log = logging.getLogger("edgeml_agent.updates")


class DeltaUnavailable(UpdateError):
    """No usable delta this time (the reason says why); the full bundle is downloaded instead."""


def installed_dir(work_dir: Path, name: str) -> Path:
    return work_dir / "installed" / name


def installed_bundle(work_dir: Path, name: str) -> tuple[str, Path] | None:
    """(version, file) of the bundle kept for ``name``, or None when none is kept."""
    found = []
    folder = installed_dir(work_dir, name)
    for path in folder.glob("*.edgepkg") if folder.is_dir() else ():
        version = path.name.removesuffix(".edgepkg")
        try:
            parse_semver(version)
        except EdgeMLError:
            continue
        found.append((parse_semver(version), version, path))
    return (max(found)[1], max(found)[2]) if found else None


def keep_installed(work_dir: Path, name: str, version: str, bundle: Path) -> None:
    """Keep ``bundle`` (the committed version's file) as the base of the next delta; drop older ones."""
    folder = installed_dir(work_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / f"{version}.edgepkg"
    if bundle.exists():
        os.replace(bundle, kept)
    for other in folder.iterdir():
        if other != kept:
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)


def fetch_delta(http: HttpClient, server_url: str, headers: Mapping[str, str], model: DesiredModel,
                work_dir: Path, dest: Path, *, timeout_s: float = 30.0) -> int:
    """Rebuild ``model``'s bundle at ``dest`` from the kept bundle and a delta; returns the delta's size.

    Raises :class:`DeltaUnavailable` (with the reason) whenever the full download must be used instead.
    """
    if model.tar_sha256 is None or model.tar_size is None:
        raise DeltaUnavailable("the desired state names no tar-stream hash (a fleet without deltas)")
    if model.tar_size > MAX_DELTA_INPUT_BYTES:
        raise DeltaUnavailable(f"the bundle's tar stream ({model.tar_size} bytes) is over the delta limit")
    kept = installed_bundle(work_dir, model.name)
    if kept is None:
        raise DeltaUnavailable(f"no installed bundle file of {model.name} to apply a delta to")
    base_version, base_file = kept
    if base_version == model.version:
        raise DeltaUnavailable(f"{model.name}@{model.version} is the kept version itself")
    url = (f"{server_url.rstrip('/')}/v1/bundles/{quote(model.name, safe='')}@{quote(model.version, safe='')}"
           f"/delta?from={quote(base_version, safe='')}")
    delta = _get_bounded(http, url, headers, cap=model.size - 1, timeout_s=timeout_s)
    try:
        rebuilt = apply_delta(tar_stream(base_file), delta, max_result_bytes=model.tar_size)
    except DeltaError as exc:
        raise DeltaUnavailable(str(exc)) from exc
    if len(rebuilt) != model.tar_size or hashlib.sha256(rebuilt).hexdigest() != model.tar_sha256:
        raise DeltaUnavailable("the bundle rebuilt from the delta differs from the signed desired state's tar hash")
    write_atomic(dest, rebuilt)
    log.info("%s@%s rebuilt from %s with a %d-byte delta (full bundle: %d bytes)", model.name, model.version,
             base_version, len(delta), model.size)
    return len(delta)


def _get_bounded(http: HttpClient, url: str, headers: Mapping[str, str], *, cap: int, timeout_s: float) -> bytes:
    """The body of a GET, refused once it passes ``cap`` bytes (a delta never outweighs the bundle)."""
    chunks, have = [], 0
    try:
        with http.stream(url, headers=headers, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise DeltaUnavailable(f"the fleet has no delta (HTTP {response.status_code})")
            for chunk in response.iter_bytes():
                have += len(chunk)
                if have > cap:
                    raise DeltaUnavailable(f"the delta is larger than the {cap + 1}-byte bundle it replaces")
                chunks.append(chunk)
    except HttpUnreachable as exc:
        raise DeltaUnavailable(f"delta download failed: {exc}") from exc
    return b"".join(chunks)
