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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeml.bundle.keys import SigningKey
from edgeml.bundle.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    TensorSpec,
    canonical_json,
)
from edgeml.bundle.prepost import (
    DEFAULT_MAX_LENGTH,
    StatePair,
    TokenizerSpec,
    check_state_pairs,
    infer_state_pairs,
    tokenizer_inputs,
)
from edgeml.errors import ConfigError, ManifestError
from edgeml.fileio import sha256_file

_MTIME = 0  # reproducible archives: the manifest's `created` carries the real time
TOKENIZER_ARCNAME = "tokenizer/tokenizer.json"
MAX_TOKENIZER_BYTES = 64 << 20    # the largest tokenizer.json seen is ~17 MB (multilingual vocabularies)


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


def state_entry(requested: Sequence[str | StatePair], inputs: Sequence[TensorSpec],
                outputs: Sequence[TensorSpec]) -> list[dict[str, str]]:
    """The manifest's ``state`` list: the pairs the build named (``"state=stateN"``), else those the
    naming rules find (:func:`edgeml.bundle.prepost.infer_state_pairs`)."""
    pairs = [StatePair.parse(p) if isinstance(p, str) else p for p in requested]
    try:
        checked = check_state_pairs(pairs or infer_state_pairs(inputs, outputs), inputs, outputs)
    except ManifestError as exc:
        raise ConfigError(f"--state: {exc}") from None
    return [p.to_json() for p in checked]


def tokenizer_entry(source: str | Path, inputs: Sequence[TensorSpec]) -> tuple[dict[str, Any], Path]:
    """The manifest's ``tokenizer`` entry and the file to ship for ``source``: a tokenizer.json, or a
    directory holding one (a Hugging Face checkpoint; its tokenizer_config.json's ``model_max_length``
    is read). The inputs it fills are found by name; a fixed sequence length pads to that length."""
    path = Path(source)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"tokenizer {source}: no such file; pass a tokenizer.json or a directory holding one")
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise ConfigError(f"tokenizer {path} is {path.stat().st_size} bytes; at most {MAX_TOKENIZER_BYTES} are packed")
    from edgeml.textinput import load_tokenizer

    load_tokenizer(path)   # refuse a file the device could not read, now rather than there
    fills = tokenizer_inputs(inputs)
    if "input_ids" not in fills:
        raise ConfigError(f"--tokenizer: the model has no input named input_ids (inputs: "
                          f"{', '.join(s.name for s in inputs)}); a tokenizer fills input_ids, attention_mask "
                          "and token_type_ids")
    seq = [s.shape[1] for s in inputs if s.name in fills.values() and len(s.shape) == 2]
    fixed = next((d for d in seq if isinstance(d, int) and d > 0), None)
    max_length = fixed or _declared_max_length(path, folder) or DEFAULT_MAX_LENGTH
    spec = TokenizerSpec(TOKENIZER_ARCNAME, fills, max_length, "max_length" if fixed else "longest")
    return spec.to_json(), path


def _declared_max_length(path: Path, folder: Path) -> int | None:
    """The tokenizer's own limit: truncation in tokenizer.json, else model_max_length beside it."""
    try:
        truncation = (json.loads(path.read_text(encoding="utf-8")).get("truncation") or {})
        if isinstance(truncation.get("max_length"), int):
            return int(truncation["max_length"])
        config = folder / "tokenizer_config.json"
        if config.is_file():
            value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
            if isinstance(value, int) and 0 < value <= 1 << 20:   # HF writes 1e30 for "no limit"
                return value
    except (OSError, ValueError, AttributeError):
        return None
    return None
