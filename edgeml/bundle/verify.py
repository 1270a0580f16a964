"""Verify a bundle before anything in it is trusted, and unpack it only after it verified.

The order is the security property: (0) the archive is read by a reader that bounds every header
(extended ones included) and the member count, so a crafted archive is refused within fixed memory
before anything in it is checked (:mod:`edgeml.bundle.tarstream`); (1) every archive member is checked
for safety as it streams by (no links, devices, absolute paths, '..', over-size, reserved names, a
directory where a file is listed); (2) manifest.json and manifest.sig, which must be
the first two members, are read with small caps and the signature is checked against the trusted keys;
(3) every other member's size is compared with the signed manifest *before* it is read, then its
sha256 while it streams by. Only a bundle that passed all of that is unpacked, and the unpack checks
the hashes again as it writes (the file could have changed in between) into a temporary directory that
is renamed into place at the end, so a failed unpack leaves nothing behind.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeml.bundle.archive import (
    RESERVED_NAMES,
    check_bundle_paths,
    check_directory_member,
    iter_chunks,
    open_tar_stream,
    read_member,
    safe_member_name,
)
from edgeml.bundle.keys import verify_signature
from edgeml.bundle.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, SIGNATURE_NAME, FileEntry, Manifest
from edgeml.bundle.tarstream import ArchiveFormatError, TarMember, TarStream
from edgeml.errors import (
    IntegrityError,
    ManifestError,
    SignatureError,
    TruncatedBundleError,
    UnsafeArchiveError,
)
from edgeml.fileio import sha256_file

# The manifest is parsed before its signature can be checked, and JSON grows ~30x into Python objects:
# 1 MiB keeps that under ~30 MB. Manifests edgeml writes are tens of KB (labels travel as a file).
MAX_SIGNATURE_BYTES = 64 << 10
DEFAULT_MAX_MEMBER_BYTES = 4 << 30
DEFAULT_MAX_TOTAL_BYTES = 8 << 30


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature and hashes were checked. ``root`` is set once it is unpacked."""

    path: Path
    manifest: Manifest
    key_id: str
    root: Path | None = None

    def file(self, name: str) -> Path:
        if self.root is None:
            raise ManifestError("the bundle is not unpacked; use unpack_bundle()")
        return self.root / name

    @property
    def model_path(self) -> Path:
        return self.file(self.manifest.model)


@dataclass(frozen=True)
class BundleHeader:
    """What a bundle claims about itself, before trust: for `edgeml inspect`."""

    manifest: Manifest
    key_id: str | None
    signature: bytes | None
    manifest_bytes: bytes
    signature_document: bytes = b""


def read_header(path: str | Path) -> BundleHeader:
    """Read the manifest and signature document (safety-checked, not trust-checked)."""
    with open_tar_stream(Path(path)) as tar:
        return _read_header(tar, Path(path))


def verify_bundle(
    path: str | Path,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> VerifiedBundle:
    """Check signature and every hash without writing anything; raise a :class:`BundleError` subclass."""
    path = Path(path)
    with open_tar_stream(path) as tar:
        header = _read_header(tar, path)
        _check_signature(header, trusted)
        _walk_payload(tar, header.manifest, max_member_bytes, max_total_bytes, sink=None)
    assert header.key_id is not None
    return VerifiedBundle(path, header.manifest, header.key_id)


def unpack_bundle(
    path: str | Path,
    dest: str | Path,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> VerifiedBundle:
    """Verify, then unpack into ``dest`` (which must not exist yet). Returns the bundle with ``root``."""
    path, dest = Path(path), Path(dest)
    if dest.exists():
        raise UnsafeArchiveError(f"refusing to unpack into {dest}: it already exists")
    verified = verify_bundle(path, trusted, max_member_bytes=max_member_bytes, max_total_bytes=max_total_bytes)
    tmp = dest.with_name(f".{dest.name}.unpacking-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with open_tar_stream(path) as tar:
            header = _read_header(tar, path)
            if header.manifest_bytes != verified.manifest.to_bytes():
                raise IntegrityError(f"{path} changed while it was being unpacked")
            _check_signature(header, trusted)
            (tmp / MANIFEST_NAME).write_bytes(header.manifest_bytes)
            (tmp / SIGNATURE_NAME).write_bytes(header.signature_document)

            def sink(entry: FileEntry) -> IO[bytes]:
                target = tmp / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                return open(target, "wb")

            _walk_payload(tar, header.manifest, max_member_bytes, max_total_bytes, sink=sink)
        _fsync_tree(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return VerifiedBundle(path, verified.manifest, verified.key_id, root=dest)


def load_unpacked(root: str | Path, trusted: Mapping[str, Ed25519PublicKey]) -> VerifiedBundle:
    """Re-verify an unpacked bundle directory: signature of its manifest, then every file's hash.

    Used by the agent when it starts: the directory was verified when it was unpacked; this makes sure
    nothing on disk was changed, added to the manifest, or removed since.
    """
    root = Path(root)
    try:
        manifest_bytes = (root / MANIFEST_NAME).read_bytes()
        sig_doc = (root / SIGNATURE_NAME).read_bytes()
    except OSError as exc:
        raise ManifestError(f"{root} is not an unpacked bundle ({exc.filename}: {exc.strerror})") from exc
    manifest = Manifest.from_bytes(manifest_bytes)
    key_id, signature = _parse_signature(sig_doc, root)
    _check_signature(BundleHeader(manifest, key_id, signature, manifest_bytes, sig_doc), trusted)
    for entry in manifest.files:
        f = root / entry.path
        if not f.is_file() or f.is_symlink():
            raise IntegrityError(f"{f} is missing from the unpacked bundle")
        if f.stat().st_size != entry.size or sha256_file(f) != entry.sha256:
            raise IntegrityError(f"{f} was modified after the bundle was unpacked")
    return VerifiedBundle(root, manifest, key_id, root=root)


# -- internals --------------------------------------------------------------------------------------

def _next_member(tar: TarStream, path: Path) -> TarMember | None:
    try:
        return tar.next()
    except ArchiveFormatError as exc:
        raise TruncatedBundleError(
            f"{path} ends before its manifest and signature were read (truncated or not a bundle): {exc}"
        ) from exc


def _read_header(tar: TarStream, path: Path) -> BundleHeader:
    first = _next_member(tar, path)
    if first is None or safe_member_name(first) != MANIFEST_NAME:
        found = first.name if first is not None else "nothing"
        raise ManifestError(f"{path}: the first member must be {MANIFEST_NAME} (found {found})")
    manifest_bytes = read_member(tar, first, MAX_MANIFEST_BYTES)
    manifest = Manifest.from_bytes(manifest_bytes, source=str(path))  # bounded parse, format, schema
    second = _next_member(tar, path)
    if second is None:
        # A real unsigned bundle still holds its model files; an archive that stops here was cut short.
        raise TruncatedBundleError(f"{path} ends right after its manifest (truncated download?)")
    if safe_member_name(second) != SIGNATURE_NAME:
        # Unsigned. The member just read is payload, so this stream cannot be walked further: callers
        # that need the payload refuse unsigned bundles before walking it.
        return BundleHeader(manifest, None, None, manifest_bytes)
    sig_doc = read_member(tar, second, MAX_SIGNATURE_BYTES)
    key_id, signature = _parse_signature(sig_doc, path)
    return BundleHeader(manifest, key_id, signature, manifest_bytes, sig_doc)


def _parse_signature(data: bytes, path: Path) -> tuple[str, bytes]:
    try:
        doc = json.loads(data)
        if doc.get("algorithm") != "ed25519":
            raise SignatureError(f"{path}: signature algorithm {doc.get('algorithm')!r} is not ed25519")
        return str(doc["key_id"]), base64.b64decode(doc["signature"], validate=True)
    except (UnicodeDecodeError, ValueError, RecursionError, KeyError, AttributeError, binascii.Error,
            TypeError) as exc:  # ValueError covers JSONDecodeError and binascii.Error
        raise SignatureError(f"{path}: manifest.sig is malformed ({exc})") from exc


def _check_signature(header: BundleHeader, trusted: Mapping[str, Ed25519PublicKey]) -> None:
    if header.signature is None or header.key_id is None:
        raise SignatureError("the bundle is unsigned (no manifest.sig); sign it with: edgeml build --key KEY")
    key = trusted.get(header.key_id)
    if key is None:
        raise SignatureError(
            f"the bundle is signed by key {header.key_id}, which is not trusted here; "
            "trust the builder's public key with: edgeml keys trust KEY.pub"
        )
    if not verify_signature(key, header.signature, header.manifest_bytes):
        raise SignatureError(f"the manifest signature does not match key {header.key_id}: the manifest was altered")


def _walk_payload(
    tar: TarStream,
    manifest: Manifest,
    max_member_bytes: int,
    max_total_bytes: int,
    sink: Callable[[FileEntry], IO[bytes]] | None,
) -> None:
    expected = {e.path: e for e in manifest.files}
    check_bundle_paths(expected)
    files = set(expected) | set(RESERVED_NAMES)
    seen: set[str] = set()
    total = 0
    while True:
        try:
            member = tar.next()
        except ArchiveFormatError as exc:
            raise TruncatedBundleError(f"the bundle archive is cut short or corrupt: {exc}") from exc
        if member is None:
            break
        entry = _listed_entry(member, expected, files, seen)
        if entry is None:
            continue
        if member.size > max_member_bytes:
            raise UnsafeArchiveError(
                f"bundle member '{entry.path}' is {member.size} bytes, over the {max_member_bytes}-byte cap")
        total += member.size
        if total > max_total_bytes:
            raise UnsafeArchiveError(f"the bundle holds more than the {max_total_bytes}-byte cap")
        if member.size != entry.size:
            raise IntegrityError(
                f"bundle member '{entry.path}' is {member.size} bytes; the signed manifest says {entry.size}")
        _check_member_data(tar, member, entry, sink)
        seen.add(entry.path)
    missing = sorted(set(expected) - seen)
    if missing:
        raise TruncatedBundleError(f"the bundle lacks {len(missing)} file(s) its manifest lists "
                                   f"({', '.join(missing[:3])}): truncated or tampered")


def _listed_entry(member: TarMember, expected: Mapping[str, FileEntry], files: set[str],
                  seen: set[str]) -> FileEntry | None:
    """The manifest entry a payload member stands for; None for a (harmless) directory member."""
    name = safe_member_name(member)
    if member.isdir():
        check_directory_member(name, files)
        return None
    if name in RESERVED_NAMES:
        raise UnsafeArchiveError(f"bundle member '{name}' appears again after the bundle's header; "
                                 "that name is reserved for the header")
    entry = expected.get(name)
    if entry is None or name in seen:
        what = "appears twice" if name in seen else "is not listed in the signed manifest"
        raise UnsafeArchiveError(f"bundle member '{name}' {what}")
    return entry


def _check_member_data(tar: TarStream, member: TarMember, entry: FileEntry,
                       sink: Callable[[FileEntry], IO[bytes]] | None) -> None:
    """Stream the member through sha256 (and into ``sink``'s file when unpacking)."""
    f = tar.extractfile(member)
    if f is None:
        raise UnsafeArchiveError(f"bundle member '{entry.path}' is not a regular file")
    digest = hashlib.sha256()
    out = sink(entry) if sink else None
    try:
        for chunk in iter_chunks(f, member.size, entry.path):
            digest.update(chunk)
            if out:
                out.write(chunk)
    finally:
        if out:
            out.close()
    if digest.hexdigest() != entry.sha256:
        raise IntegrityError(f"bundle member '{entry.path}' does not match its sha256 in the signed manifest "
                             "(tampered or corrupt)")


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def manifest_summary(bundle: VerifiedBundle | BundleHeader) -> dict[str, Any]:
    m = bundle.manifest
    return {"name": m.name, "version": m.version, "target": m.target_id, "runtime": m.runtime,
            "precision": m.precision, "key_id": bundle.key_id}
