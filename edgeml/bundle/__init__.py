"""The signed bundle (``.edgepkg``): format, keys, packing and verification, shared by every side."""

from edgeml.bundle.keys import (
    SigningKey,
    TrustStore,
    generate_key,
    key_id,
    load_public_key,
    load_signing_key,
    trust_key,
)
from edgeml.bundle.manifest import FORMAT_VERSION, Manifest, TensorSpec, parse_semver
from edgeml.bundle.pack import pack_bundle
from edgeml.bundle.verify import (
    BundleHeader,
    VerifiedBundle,
    load_unpacked,
    read_header,
    unpack_bundle,
    verify_bundle,
)
from edgeml.fileio import sha256_file

__all__ = [
    "FORMAT_VERSION",
    "BundleHeader",
    "Manifest",
    "SigningKey",
    "TensorSpec",
    "TrustStore",
    "VerifiedBundle",
    "generate_key",
    "key_id",
    "load_public_key",
    "load_signing_key",
    "load_unpacked",
    "pack_bundle",
    "parse_semver",
    "read_header",
    "sha256_file",
    "trust_key",
    "unpack_bundle",
    "verify_bundle",
]
