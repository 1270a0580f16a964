"""Bundle files on local disk, content-addressed by sha256 (the same bytes are stored once).

Beside each bundle the store keeps what is derived from it and never changes: ``<digest>.tar.json``
(sha256 and size of its uncompressed tar stream, signed into desired states so a device can check a
bundle rebuilt from a delta) and ``deltas/<from>-<to>.zst`` (the delta between two versions, made on
first request). Derived files are written through a temporary file and a rename, so two server
processes making the same one at once both end with one whole file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path

from edgeml.bundle.delta import TarDigest, make_delta, tar_digest, tar_stream
from edgeml.errors import FleetError
from edgeml.fileio import write_atomic

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Upload:
    """An upload being written to a temporary file while its sha256 is computed."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, suffix=".upload")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)
        self._file.write(chunk)

    def finish(self) -> tuple[Path, str, int]:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self.path, self._digest.hexdigest(), self.size

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class DeltaInProgress(FleetError):
    """Another thread of this process is making the delta asked for."""


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        # One delta is made once per process even when a whole wave of devices asks for it at once.
        self._making: dict[str, threading.Lock] = {}
        self._making_guard = threading.Lock()
        self._tar_infos: dict[str, TarDigest] = {}   # immutable per digest: read once per process

    def path(self, digest: str) -> Path:
        if not _SHA256.match(digest):
            raise FleetError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open_upload(self) -> Upload:
        """Start receiving a file; then :meth:`commit` it once it verified, or :meth:`discard` it."""
        return Upload(self._tmp)

    def commit(self, tmp: Path, digest: str) -> Path:
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
        return final

    @staticmethod
    def discard(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
        self._tar_info_path(digest).unlink(missing_ok=True)
        self._tar_infos.pop(digest, None)
        deltas = self.root / "deltas"
        if deltas.is_dir():
            for made in (*deltas.glob(f"{digest}-*.zst"), *deltas.glob(f"*-{digest}.zst")):
                made.unlink(missing_ok=True)

    # -- derived files ---------------------------------------------------------------------------------
    def _tar_info_path(self, digest: str) -> Path:
        return self.path(digest).with_name(f"{digest}.tar.json")

    def tar_info(self, digest: str) -> TarDigest | None:
        """sha256 and size of the bundle's tar stream (computed once, then read from beside it); None
        when the bundle's file is missing."""
        known = self._tar_infos.get(digest)
        if known is not None:
            return known
        sidecar = self._tar_info_path(digest)
        try:
            doc = json.loads(sidecar.read_text())
            found = TarDigest(str(doc["sha256"]), int(doc["size"]))
        except (OSError, ValueError, KeyError, TypeError):
            if not self.exists(digest):
                return None
            found = tar_digest(self.path(digest))
            write_atomic(sidecar, json.dumps({"sha256": found.sha256, "size": found.size}))
        self._tar_infos[digest] = found
        return found

    def delta_path(self, base: str, target: str) -> Path:
        self.path(base), self.path(target)   # both checked to be digests
        return self.root / "deltas" / f"{base}-{target}.zst"

    def delta(self, base: str, target: str, *, wait: bool = True) -> Path:
        """The delta that rebuilds ``target``'s tar stream from ``base``'s, made now if not made before.

        With ``wait=False`` a delta another thread is making right now raises :class:`DeltaInProgress`
        instead of holding the caller (a request thread) for the seconds it takes. Raises
        :class:`~edgeml.bundle.delta.DeltaError` when either is too large for a delta and
        :class:`FleetError` when a bundle file is missing."""
        made = self.delta_path(base, target)
        if made.is_file():
            return made
        with self._making_guard:
            lock = self._making.setdefault(made.name, threading.Lock())
        if not lock.acquire(blocking=wait):
            raise DeltaInProgress("the delta is being made right now")
        try:
            return made if made.is_file() else self._make_delta(base, target, made)
        finally:
            lock.release()

    def _make_delta(self, base: str, target: str, made: Path) -> Path:
        for digest in (base, target):
            if not self.exists(digest):
                raise FleetError(f"the file of bundle {digest} is missing from the artifact store")
        data = make_delta(tar_stream(self.path(base)), tar_stream(self.path(target)))
        made.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(made, data)
        return made
