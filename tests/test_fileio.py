"""The shared file plumbing: atomic replacement and file digests."""

from __future__ import annotations

import hashlib
import stat
import threading
from pathlib import Path

import pytest

from edgeml.fileio import sha256_file, write_atomic


def test_write_atomic_replaces_content_and_sets_mode_before_rename(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    target.write_text("old")
    write_atomic(target, '{"token": "new"}', mode=0o600)
    assert target.read_text() == '{"token": "new"}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]  # no temporary file left behind


def test_concurrent_writers_of_one_path_never_mix_or_collide(tmp_path: Path) -> None:
    # Fixed temporary names (".passwords.tmp") let two writers truncate each other's file and rename
    # a half-written one; every call must use its own temporary file.
    target = tmp_path / "passwords"
    payloads = [bytes([65 + i]) * 200_000 for i in range(8)]
    errors: list[BaseException] = []

    def writer(data: bytes) -> None:
        try:
            for _ in range(20):
                write_atomic(target, data)
        except BaseException as exc:  # surfaced below: a collision raises FileNotFoundError here
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["passwords"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path: Path) -> None:
    data = bytes(range(256)) * ((3 << 20) // 256 + 7)  # over three 1 MiB chunks, not a multiple
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
