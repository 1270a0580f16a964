"""Hand-made tar archives for the bundle-reader attacks: raw 512-byte headers, PAX records, zstd bombs.

Built byte by byte (not with ``tarfile``) so a header can claim what no honest writer would: a 1 GiB
extended header, a size in base-256, a type no bundle holds. A zstd *bomb* is a stream of frames that
decompresses to ``claimed`` bytes from a few dozen KB: one frame of filler, compressed once, repeated.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zstandard

from edgeml.bundle import SigningKey, pack_bundle
from edgeml.bundle.manifest import canonical_json
from edgeml.bundle.pack import signature_document

BLOCK = 512
GIB = 1 << 30
MANIFEST = {
    "name": "tiny", "version": "1.0.0", "target": {"id": "x86-cpu"}, "runtime": "onnxruntime",
    "precision": "fp32", "model": "model/model.onnx",
    "inputs": [{"name": "x", "dtype": "float32", "shape": ["N", 4]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": ["N", 3]}],
}
_FILL_CHUNK = 1 << 20
_compressor = zstandard.ZstdCompressor(level=3)


def header(name: bytes, size: int, kind: bytes = b"0", *, linkname: bytes = b"", raw_size: bytes | None = None,
           magic: bytes = b"ustar\x0000") -> bytes:
    """One ustar header block with a correct checksum (``raw_size`` replaces the size field as given)."""
    block = bytearray(BLOCK)
    block[0:len(name[:100])] = name[:100]
    block[100:108] = b"0000644\x00"
    block[108:116] = block[116:124] = b"0000000\x00"
    if raw_size is not None:
        block[124:136] = raw_size
    elif size < 8 ** 11:
        block[124:136] = b"%011o\x00" % size
    else:
        block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"00000000000\x00"
    block[156:157] = kind
    block[157:157 + len(linkname[:100])] = linkname[:100]
    block[257:265] = magic
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, data: bytes, kind: bytes = b"0") -> bytes:
    return header(name, len(data), kind) + padded(data)


def pax_record(key: str, value: bytes) -> bytes:
    """``"<length> <key>=<value>\\n"``, where the length counts its own digits."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def end_of_archive() -> bytes:
    return bytes(2 * BLOCK)


def zstd(data: bytes) -> bytes:
    return _compressor.compress(data)


def zstd_fill(length: int, fill: bytes = b"a") -> bytes:
    """Concatenated zstd frames that decompress to ``length`` bytes of ``fill`` (~40 bytes per MiB)."""
    whole, rest = divmod(length, _FILL_CHUNK)
    return zstd(fill * _FILL_CHUNK) * whole + (zstd(fill * rest) if rest else b"")


def extension_bomb(kind: bytes, claimed: int = GIB) -> tuple[bytes, bytes, int]:
    """(header + first bytes, last bytes, filler length) of an extended header of ``claimed`` bytes
    whose data really is there once decompressed: a PAX record, or a GNU long name, of that length."""
    if kind in (b"x", b"g"):
        start = b"%d comment=" % claimed
        head, tail = start, b"\n"
    else:
        head, tail = b"model/", b"\x00"
    name = b"././@PaxHeader" if kind in (b"x", b"g") else b"././@LongLink"
    fill = claimed - len(head) - len(tail)
    return header(name, claimed, kind) + head, tail + bytes(-claimed % BLOCK), fill


def bomb_stream(before: bytes, kind: bytes, after: bytes, claimed: int = GIB) -> bytes:
    """A zstd stream: ``before``, an extended header of ``claimed`` bytes, then ``after``."""
    head, tail, fill = extension_bomb(kind, claimed)
    return zstd(before + head) + zstd_fill(fill) + zstd(tail + after)


def genuine_bundle(tmp_path: Path, key: SigningKey, version: str = "1.0.0") -> bytes:
    """The bytes of an uncompressed, validly signed bundle (manifest, signature, two payload files)."""
    src = tmp_path / "genuine-src"
    src.mkdir(exist_ok=True)
    (src / "model.onnx").write_bytes(bytes(range(256)) * 16)
    (src / "input.npz").write_bytes(b"sample" * 50)
    out = tmp_path / "genuine.edgepkg"
    files = {"model/model.onnx": src / "model.onnx", "smoke/input.npz": src / "input.npz"}
    pack_bundle(out, {**MANIFEST, "version": version}, files, key, compression=None)
    return out.read_bytes()


def split_at_payload(bundle: bytes) -> tuple[bytes, bytes]:
    """(manifest + signature members, the rest): where an attacker without a key can insert anything."""
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tar:
        third = tar.getmembers()[2]
    return bundle[:third.offset], bundle[third.offset:]


def file_entries(files: Mapping[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in files.items()]


def manifest_bytes(contents: Mapping[str, bytes], /, **manifest: Any) -> bytes:
    """A canonical manifest listing ``contents`` (``manifest`` overrides keys; ``files=`` replaces the list)."""
    raw = {**MANIFEST, "format": 1, "created": "2026-11-30T00:00:00+00:00", "files": file_entries(contents),
           **manifest}
    return canonical_json(raw)


def signed_header(key: SigningKey, contents: Mapping[str, bytes], /, **manifest: Any) -> bytes:
    """The manifest.json and manifest.sig members of a bundle listing ``contents``, signed by ``key``:
    what a builder (or an attacker holding a builder key) can sign, checked by nothing but the reader."""
    data = manifest_bytes(contents, **manifest)
    return member(b"manifest.json", data) + member(b"manifest.sig", signature_document(key, data))


def payload(files: Mapping[str, bytes]) -> bytes:
    return b"".join(member(p.encode(), d) for p, d in files.items())


def write(path: Path, *parts: bytes) -> Path:
    """A plain tar file of ``parts`` (members, already encoded) and the end-of-archive blocks."""
    path.write_bytes(b"".join(parts) + end_of_archive())
    return path
