"""Write a signed bundle: manifest.json, manifest.sig, then every file the manifest lists.

The manifest and its signature come first so a reader can check the signature before touching any
other byte. Archives are reproducible (fixed mtimes, owners and order) and written atomically.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeml.bundle.keys import SigningKey
from edgeml.bundle.manifest import FORMAT_VERSION, MANIFEST_NAME, SIGNATURE_NAME, Manifest, canonical_json
from edgeml.errors import ManifestError
from edgeml.fileio import sha256_file

_MTIME = 0  # reproducible archives: the manifest's `created` carries the real time


def signature_document(key: SigningKey, manifest_bytes: bytes) -> bytes:
    sig = key.sign(manifest_bytes)
    return canonical_json(
        {"format": FORMAT_VERSION, "algorithm": "ed25519", "key_id": key.key_id,
         "signature": base64.b64encode(sig).decode("ascii")}
    )


def pack_bundle(
    out_path: str | Path,
    manifest: Mapping[str, Any],
    files: Mapping[str, str | Path],
    key: SigningKey,
    *,
    compression: str | None = "zstd",
) -> Manifest:
    """Write ``out_path`` and return the manifest as signed.

    ``manifest`` holds every key except ``format``, ``files`` and (optionally) ``created``, which are
    filled in here. ``files`` maps the path inside the bundle to the file on disk.
    """
    if compression not in (None, "zstd"):
        raise ManifestError(f"unknown compression '{compression}'; use 'zstd' or None")
    out_path = Path(out_path)
    entries = []
    for arcname, src in sorted(files.items()):
        _check_arcname(arcname)
        src = Path(src)
        entries.append({"path": arcname, "size": src.stat().st_size, "sha256": sha256_file(src)})
    raw = {**manifest, "format": FORMAT_VERSION, "files": entries}
    raw.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    signed = Manifest.from_dict(json.loads(canonical_json(raw)))
    manifest_bytes = signed.to_bytes()
    sig_bytes = signature_document(key, manifest_bytes)

    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as raw_out:
            if compression == "zstd":
                import zstandard

                with zstandard.ZstdCompressor(level=10, threads=-1).stream_writer(raw_out, closefd=False) as z:
                    _write_tar(z, manifest_bytes, sig_bytes, files)
            else:
                _write_tar(raw_out, manifest_bytes, sig_bytes, files)
            raw_out.flush()
            os.fsync(raw_out.fileno())
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return signed


def _write_tar(fileobj: Any, manifest_bytes: bytes, sig_bytes: bytes, files: Mapping[str, str | Path]) -> None:
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, sig_bytes)):
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
        for arcname, src in sorted(files.items()):
            with open(src, "rb") as f:
                tar.addfile(_info(arcname, os.fstat(f.fileno()).st_size), f)


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, _MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _check_arcname(name: str) -> None:
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or ".." in parts or "" in parts or "." in parts
            or name in (MANIFEST_NAME, SIGNATURE_NAME)):
        raise ManifestError(f"'{name}' cannot be a path inside a bundle (relative, no '..', not a manifest name)")
