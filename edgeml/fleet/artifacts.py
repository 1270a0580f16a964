"""Bundle files on local disk, content-addressed by sha256 (the same bytes are stored once)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from edgeml.errors import FleetError

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


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

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
