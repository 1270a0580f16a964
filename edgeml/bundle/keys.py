"""Ed25519 signing keys: generate, store, load, and the set of keys a machine trusts.

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key, so the same key has
the same id everywhere (workstation, fleet server, device) without any registry.
Private keys are PEM (PKCS#8, unencrypted) written with mode 0600; public keys are PEM files
``<name>.pub``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeml.errors import KeyStoreError
from edgeml.paths import keys_dir, trusted_keys_dir


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """A private key and its id. ``sign`` returns the raw 64-byte signature."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_pem(self) -> bytes:
        return public_key_pem(self.public_key)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_key(name: str = "default", directory: Path | None = None, *, overwrite: bool = False) -> SigningKey:
    """Create ``<name>.key`` (0600) and ``<name>.pub`` in the key directory and return the key."""
    directory = directory or keys_dir()
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if private_path.exists() and not overwrite:
        raise KeyStoreError(f"a key named '{name}' already exists at {private_path}; pick another --name")
    if overwrite:
        private_path.unlink(missing_ok=True)
    key = SigningKey.generate()
    _write_private(private_path, key.private_pem())
    public_path.write_bytes(key.public_pem())
    return key


def load_signing_key(path_or_name: str | Path) -> SigningKey:
    """Load a private key from a path, or by name from the key directory."""
    path = Path(path_or_name)
    if not path.exists() and not path.suffix:
        path = keys_dir() / f"{path_or_name}.key"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyStoreError(
            f"cannot read signing key {path}: {exc.strerror}. Create one with: edgeml keys generate") from exc
    return SigningKey(_load_private_bytes(data, str(path)))


def load_public_key(data_or_path: bytes | str | Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM bytes, or from a ``.pub`` file (or a private key file)."""
    if isinstance(data_or_path, bytes):
        data, where = data_or_path, "the given bytes"
    else:
        path = Path(data_or_path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyStoreError(f"cannot read public key {path}: {exc.strerror}") from exc
        where = str(path)
    if b"PRIVATE KEY" in data:
        return _load_private_bytes(data, where).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"{where} is not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyStoreError(f"{where} is not an Ed25519 public key")
    return key


def _load_private_bytes(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"{where} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyStoreError(f"{where} is not an Ed25519 key; edgeml signs with Ed25519 (edgeml keys generate)")
    return key


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


class TrustStore(Mapping[str, Ed25519PublicKey]):
    """The public keys a machine accepts signatures from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> TrustStore:
        """Keys from files, or from every ``*.pub`` in the directories given."""
        keys: list[Ed25519PublicKey] = []
        for p in map(Path, paths):
            if p.is_dir():
                keys += [load_public_key(f) for f in sorted(p.glob("*.pub"))]
            else:
                keys.append(load_public_key(p))
        return cls(keys)

    @classmethod
    def default(cls) -> TrustStore:
        """The user's trusted keys directory plus their own public keys (they trust what they sign)."""
        dirs = [d for d in (trusted_keys_dir(), keys_dir()) if d.is_dir()]
        return cls.from_paths(dirs)

    def add(self, key: Ed25519PublicKey) -> str:
        kid = key_id(key)
        self._keys[kid] = key
        return kid

    def replace(self, keys: Iterable[Ed25519PublicKey]) -> None:
        """Hold exactly ``keys`` from now on (in place: whoever holds this store sees the change)."""
        self._keys = {key_id(k): k for k in keys}

    def __getitem__(self, kid: str) -> Ed25519PublicKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def trust_key(public_key_path: str | Path, directory: Path | None = None) -> str:
    """Copy a public key into the trusted keys directory; returns its key id."""
    key = load_public_key(public_key_path)
    kid = key_id(key)
    directory = directory or trusted_keys_dir()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{kid}.pub").write_bytes(public_key_pem(key))
    return kid
