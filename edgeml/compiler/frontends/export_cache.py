"""Exports of saved models (``.pt2``, Hugging Face directories, Keras/SavedModel), cached by content.

A Hugging Face export takes tens of seconds (starting torch and transformers, tracing); a rebuild with
another precision or gate must not pay it again. An entry lives under ``cache_dir()/imports/<key>/``,
where the key hashes the source's digest, the front-end kind, the opset, the toolchain's recipe hash,
the export script's own bytes and the edgeml version: a changed model, option, toolchain or exporter
misses. Entries are written into a staging directory and renamed into place (a crash leaves no half
entry), as the build cache does (:mod:`edgeml.compiler.pipeline`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from edgeml._version import __version__
from edgeml.fileio import sha256_file
from edgeml.paths import cache_dir

COMPLETE = ".complete"
_NOT_CACHED = ("saved_model",)      # the Keras converter's intermediate SavedModel: not needed again


def imports_root() -> Path:
    return cache_dir() / "imports"


def cache_key(*, kind: str, source_sha256: str, opset: int, recipe_hash: str, script: Path) -> str:
    blob = json.dumps({"kind": kind, "source": source_sha256, "opset": opset, "recipe": recipe_hash,
                       "script": sha256_file(script), "edgeml": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lookup(key: str) -> Path | None:
    entry = imports_root() / key
    return entry if (entry / COMPLETE).is_file() else None


def store(key: str, out_dir: Path) -> Path:
    """Copy a finished export into the cache; returns the entry (another process's, if it won the race)."""
    root = imports_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    staging = root / f".{key}.{os.getpid()}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(out_dir, staging, ignore=shutil.ignore_patterns(*_NOT_CACHED))
    (staging / COMPLETE).write_text(key)
    try:
        staging.rename(final)
    except OSError:  # an entry of the same key appeared meanwhile: same content by construction
        shutil.rmtree(staging, ignore_errors=True)
    return final
