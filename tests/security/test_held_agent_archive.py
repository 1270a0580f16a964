"""Archive-path attacks delivered to a real agent that is serving v1, by the route a real update takes.

The attacker appends a member to a genuinely signed v2 bundle (the signature covers the manifest, not the
tar stream) and gets a desired state that names the altered archive's own sha256 and size, so the hash and
size checks pass and only the archive-path defence stands between the member and the device's disk. Each
attempt must be refused before the switch, write nothing outside the agent's store, and leave v1
answering — the same bytes as before the attempt, not merely the same version label.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zstandard

from edgeml.bundle import SigningKey
from tests.updates.helpers import desired
from tests.updates.test_machine_inprocess import Rig

PROBE = {"inputs": {"x": [[0.25, -1.0, 0.5, 2.0], [1.0, 0.0, -0.5, 0.125]]}}


@pytest.fixture
def rig(tmp_path: Path, signing_key: SigningKey) -> Iterator[Rig]:
    r = Rig(tmp_path, signing_key, SigningKey.generate(), targets=("x86-cpu",))
    yield r
    r.close()


def _answer(rig: Rig) -> dict[str, object]:
    r = httpx.post(f"{rig.url}/v1/models/m/infer", json=PROBE, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    raw = bundle.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [(m, (tar.extractfile(m) or io.BytesIO()).read() if m.isfile() else b"") for m in tar.getmembers()]


def _evil_member(kind: str, escape: Path) -> tuple[tarfile.TarInfo, bytes]:
    if kind == "absolute path":
        info = tarfile.TarInfo(str(escape))
    elif kind == "'..' path":
        info = tarfile.TarInfo("model/" + "../" * 24 + str(escape).lstrip("/"))
    else:  # a symlink next to the model, pointing out of the store
        info = tarfile.TarInfo("model/weights.bin")
        info.type, info.linkname = tarfile.SYMTYPE, str(escape)
        return info, b""
    info.size = len(b"owned")
    return info, b"owned"


def _tampered_v2(rig: Rig, kind: str, escape: Path) -> Path:
    members = [*_members(rig.bundles["2.0.0"]), _evil_member(kind, escape)]
    out = rig.bundles["2.0.0"].parent / f"evil-{kind.replace(' ', '-').replace(chr(39), '')}.edgepkg"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out


@pytest.mark.parametrize(("kind", "refusal"), [
    ("absolute path", "absolute path"),
    ("'..' path", "'..'"),
    ("symlink", "is a link"),
])
def test_archive_path_attack_in_a_downloaded_bundle_is_refused_and_v1_keeps_answering(
        rig: Rig, tmp_path: Path, kind: str, refusal: str) -> None:
    # given an agent answering with v1, and a v2 archive carrying one member that points out of the store
    before = _answer(rig)
    escape = tmp_path / "escaped.txt"
    evil = _tampered_v2(rig, kind, escape)
    # when a desired state that matches the altered archive's hash and size offers it
    rig.updates.offer(desired(rig.fleet_key, evil, rig.server.url(evil.name), version="2.0.0"))
    result = rig.wait_idle()
    # then the archive-path defence refuses it, before any switch
    assert refusal in str(result["reason"]), result["reason"]
    assert result["committed"] == {}
    assert "switching" not in [h[3] for h in result["history"]]
    # and nothing was written where the member pointed, nor any link left in the store
    assert not escape.exists() and not escape.is_symlink()
    assert not [p for p in (rig.data).rglob("*") if p.is_symlink()]
    # and v1 is still the one answering, with the very same outputs
    assert rig.serving() == "1.0.0"
    assert rig.agent.store.versions("m") == ["1.0.0"]
    assert _answer(rig) == before
