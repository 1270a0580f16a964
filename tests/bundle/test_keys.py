from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from edgeml.bundle import (
    SigningKey,
    TrustStore,
    generate_key,
    key_id,
    load_public_key,
    load_signing_key,
    trust_key,
)
from edgeml.errors import KeyStoreError


def test_generated_key_is_private_and_reloads_with_the_same_id(tmp_path: Path) -> None:
    key = generate_key("release", tmp_path)
    private = tmp_path / "release.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_signing_key(private).key_id == key.key_id
    assert key_id(load_public_key(tmp_path / "release.pub")) == key.key_id
    assert len(key.key_id) == 16


def test_key_is_found_by_name_in_edgeml_home(isolated_edgeml_home: Path) -> None:
    key = generate_key("ci")
    assert (isolated_edgeml_home / "keys" / "ci.key").exists()
    assert load_signing_key("ci").key_id == key.key_id
    assert key.key_id in TrustStore.default()


def test_existing_key_is_never_overwritten_by_accident(tmp_path: Path) -> None:
    first = generate_key("k", tmp_path)
    with pytest.raises(KeyStoreError, match="already exists"):
        generate_key("k", tmp_path)
    assert load_signing_key(tmp_path / "k.key").key_id == first.key_id


def test_missing_key_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="edgeml keys generate"):
        load_signing_key(tmp_path / "absent.key")


def test_non_key_files_are_refused_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("hello")
    with pytest.raises(KeyStoreError, match="not a PEM public key"):
        load_public_key(junk)
    junk_private = tmp_path / "junk.key"
    junk_private.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyStoreError, match="not an unencrypted PEM private key"):
        load_signing_key(junk_private)


def test_signature_verifies_only_with_the_right_key() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    sig = key.sign(b"manifest")
    key.public_key.verify(sig, b"manifest")
    with pytest.raises(InvalidSignature):
        other.public_key.verify(sig, b"manifest")
    with pytest.raises(InvalidSignature):
        key.public_key.verify(sig, b"manifest!")


def test_trusting_a_public_key_adds_it_to_the_default_store(tmp_path: Path) -> None:
    key = SigningKey.generate()
    pub = tmp_path / "builder.pub"
    pub.write_bytes(key.public_pem())
    assert key.key_id not in TrustStore.default()
    assert trust_key(pub) == key.key_id
    assert key.key_id in TrustStore.default()
