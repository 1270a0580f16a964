"""Bundle verification at its edges: caps hold exactly at their limit, every refusal names the bundle and
what to do, what verification returns is the bundle that was checked, and an unpack that fails at any
point — even after verification passed — leaves nothing behind."""

from __future__ import annotations

import base64
import json
import os
import re
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgeml.bundle import (
    SigningKey,
    TrustStore,
    load_unpacked,
    pack_bundle,
    read_header,
    unpack_bundle,
    verify_bundle,
)
from edgeml.bundle.verify import manifest_summary
from edgeml.errors import (
    IntegrityError,
    ManifestError,
    SignatureError,
    TruncatedBundleError,
    UnsafeArchiveError,
)
from tests.bundle.test_verify import BASE_MANIFEST, _file, _members, _write

FILES = {"assets/labels/en/names.txt": b"cat\ndog\n",     # first in the archive, three directories deep
         "model/model.onnx": bytes(range(256)) * 8, "model/weights/a.bin": b"a" * 700,
         "model/weights/b.bin": b"b" * 300, "smoke/input.npz": b"sample" * 20}
TOTAL = sum(len(d) for d in FILES.values())


def _at(path: Path) -> str:
    """A path as a pattern for ``pytest.raises(match=...)``: refusals start with the file they refuse."""
    return re.escape(str(path))


def _pack(tmp_path: Path, key: SigningKey, files: Mapping[str, bytes] = FILES, name: str = "b.edgepkg",
          version: str = "1.2.0") -> Path:
    src = tmp_path / f"src-{name}"
    paths = {}
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths[rel] = p
    out = tmp_path / name
    pack_bundle(out, {**BASE_MANIFEST, "version": version}, paths, key, compression=None)
    return out


@pytest.fixture
def bundle(tmp_path: Path, signing_key: SigningKey) -> Path:
    return _pack(tmp_path, signing_key)


def _rewrite(bundle: Path, name: str, change: object) -> Path:
    """The same bundle with one member's bytes replaced by ``change(bytes)`` (same name, new size)."""
    members = [(_file(m.name, change(d)) if m.name == name else (m, d))  # type: ignore[operator]
               for m, d in _members(bundle)]
    return _write(bundle.with_name("rewritten.edgepkg"), members)


# -- what verification returns -----------------------------------------------------------------------

def test_the_result_is_the_bundle_that_was_checked_with_the_key_that_signed_it(
        bundle: Path, trust: TrustStore, signing_key: SigningKey, tmp_path: Path) -> None:
    verified = verify_bundle(bundle, trust)
    assert (verified.path, verified.key_id, verified.root) == (bundle, signing_key.key_id, None)
    unpacked = unpack_bundle(bundle, tmp_path / "out", trust)
    assert (unpacked.path, unpacked.key_id, unpacked.root) == (bundle, signing_key.key_id, tmp_path / "out")
    again = load_unpacked(tmp_path / "out", trust)
    assert (again.path, again.key_id, again.root) == (tmp_path / "out", signing_key.key_id, tmp_path / "out")
    assert again.model_path.read_bytes() == FILES["model/model.onnx"]


def test_a_bundle_only_verified_has_no_files_to_hand_out(bundle: Path, trust: TrustStore) -> None:
    with pytest.raises(ManifestError, match=r"^the bundle is not unpacked; use unpack_bundle\(\)$"):
        _ = verify_bundle(bundle, trust).model_path


def test_the_summary_for_inspect_shows_what_the_bundle_claims(bundle: Path, signing_key: SigningKey) -> None:
    assert manifest_summary(read_header(bundle)) == {
        "name": "tiny", "version": "1.2.0", "target": "x86-cpu", "runtime": "onnxruntime", "precision": "fp32",
        "key_id": signing_key.key_id}


def test_an_unsigned_bundle_can_still_be_inspected(bundle: Path) -> None:
    members = [m for m in _members(bundle) if m[0].name != "manifest.sig"]
    header = read_header(_write(bundle.with_name("unsigned.edgepkg"), members))
    assert header.manifest.name == "tiny" and header.manifest_bytes == members[0][1]
    assert header.key_id is None and header.signature is None


# -- caps: exactly at the limit passes, one byte over is refused --------------------------------------

def test_caps_hold_exactly_at_their_limit(bundle: Path, trust: TrustStore) -> None:
    largest = max(len(d) for d in FILES.values())
    verify_bundle(bundle, trust, max_member_bytes=largest, max_total_bytes=TOTAL)
    with pytest.raises(UnsafeArchiveError, match=f"over the {largest - 1}-byte cap"):
        verify_bundle(bundle, trust, max_member_bytes=largest - 1)
    # every member fits on its own, together they are one byte too many
    with pytest.raises(UnsafeArchiveError, match=f"more than the {TOTAL - 1}-byte cap"):
        verify_bundle(bundle, trust, max_total_bytes=TOTAL - 1)


def test_unpack_applies_the_caps_too(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="cap"):
        unpack_bundle(bundle, tmp_path / "out", trust, max_total_bytes=TOTAL - 1)
    assert not (tmp_path / "out").exists()


# -- archive shapes ---------------------------------------------------------------------------------

def test_directory_entries_are_allowed_anywhere(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    # given a bundle re-tarred by a tool that writes directory entries, one before the first payload file
    members = _members(bundle)
    dirs = []
    for name in ("model", "model/weights"):
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        dirs.append((info, b""))
    retarred = _write(tmp_path / "dirs.edgepkg", [*members[:2], *dirs, *members[2:]])
    # then every file after them is still checked and unpacked
    unpack_bundle(retarred, tmp_path / "out", trust)
    assert (tmp_path / "out" / "model/weights/b.bin").read_bytes() == FILES["model/weights/b.bin"]


def test_nested_directories_and_shared_parents_unpack(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "tiny" / "1.2.0"       # its parents do not exist yet either
    unpack_bundle(bundle, dest, trust)
    for rel, data in FILES.items():
        assert (dest / rel).read_bytes() == data


def test_a_listed_member_that_appears_twice_is_refused(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    members = _members(bundle)
    twice = next(m for m in members if m[0].name == "smoke/input.npz")
    with pytest.raises(UnsafeArchiveError, match=r"'smoke/input.npz' appears twice"):
        unpack_bundle(_write(tmp_path / "twice.edgepkg", [*members, twice]), tmp_path / "out", trust)
    assert not (tmp_path / "out").exists()


def test_missing_files_are_counted_and_the_first_three_named(tmp_path: Path, signing_key: SigningKey,
                                                              trust: TrustStore) -> None:
    files = {f"data/{c}.bin": c.encode() * 10 for c in "abcde"} | {"model/model.onnx": b"m" * 10}
    members = [m for m in _members(_pack(tmp_path, signing_key, files)) if not m[0].name.startswith("data/")]
    with pytest.raises(TruncatedBundleError,
                       match=r"lacks 5 file\(s\) its manifest lists \(data/a.bin, data/b.bin, data/c.bin\): truncated"):
        verify_bundle(_write(tmp_path / "lacking.edgepkg", members), trust)


# -- every refusal names the bundle and the reason ----------------------------------------------------

def test_a_bundle_that_does_not_start_with_its_manifest_names_what_it_found(bundle: Path, trust: TrustStore,
                                                                            tmp_path: Path) -> None:
    members = _members(bundle)
    reordered = _write(tmp_path / "reordered.edgepkg", [*members[2:], *members[:2]])
    with pytest.raises(ManifestError, match=r"must be manifest.json \(found assets/labels/en/names.txt\)$"):
        verify_bundle(reordered, trust)


def test_an_unlisted_member_is_named(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    smuggled = _write(tmp_path / "extra.edgepkg", [*_members(bundle), _file("model/extra.bin", b"smuggled")])
    with pytest.raises(UnsafeArchiveError, match=r"^bundle member 'model/extra.bin' is not listed in the signed "
                                                 r"manifest$"):
        verify_bundle(smuggled, trust)


def test_an_empty_archive_has_no_manifest(tmp_path: Path, trust: TrustStore) -> None:
    empty = _write(tmp_path / "empty.edgepkg", [])
    with pytest.raises(ManifestError, match=rf"{_at(empty)}: the first member must be manifest.json \(found nothing\)"):
        verify_bundle(empty, trust)


def test_a_manifest_that_is_not_json_is_named(bundle: Path, trust: TrustStore) -> None:
    broken = _rewrite(bundle, "manifest.json", lambda d: b"{" + d)
    with pytest.raises(ManifestError, match=f"{_at(broken)}: manifest.json is not valid JSON"):
        verify_bundle(broken, trust)
    with pytest.raises(ManifestError, match=f"{_at(broken)}: manifest.json is not valid JSON"):
        read_header(broken)


def _plain_offsets(bundle: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(bundle) as tar:
        return tar.getmembers()


def test_a_download_cut_after_the_manifest_says_so(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    second = _plain_offsets(bundle)[1]
    cut = tmp_path / "cut.edgepkg"
    cut.write_bytes(bundle.read_bytes()[:second.offset])    # the manifest whole, nothing after it
    with pytest.raises(TruncatedBundleError, match=f"{_at(cut)} ends right after its manifest"):
        verify_bundle(cut, trust)


def _cut_inside_header(bundle: Path, index: int, tmp_path: Path) -> Path:
    """The bundle cut inside the header of member ``index``, which follows an extended (pax) header:
    the cut an archive reader cannot take for a clean end of the archive."""
    members = _members(bundle)
    members[index][0].pax_headers = {"comment": "added by a re-tarring tool"}
    extended = _write(tmp_path / "pax.edgepkg", members)
    member = _plain_offsets(extended)[index]
    cut = tmp_path / "cut.edgepkg"
    cut.write_bytes(extended.read_bytes()[:member.offset_data - 400])
    return cut


def test_a_download_cut_inside_the_signature_header_names_the_bundle(bundle: Path, trust: TrustStore,
                                                                     tmp_path: Path) -> None:
    cut = _cut_inside_header(bundle, 1, tmp_path)
    with pytest.raises(TruncatedBundleError, match=f"{_at(cut)} ends before its manifest and signature were read"):
        verify_bundle(cut, trust)


def test_a_download_cut_inside_a_file_names_the_file(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    model = next(m for m in _plain_offsets(bundle) if m.name == "model/model.onnx")
    cut = tmp_path / "cut.edgepkg"
    cut.write_bytes(bundle.read_bytes()[:model.offset_data + 1000])
    with pytest.raises(TruncatedBundleError, match=r"ends inside member 'model/model.onnx'"):
        unpack_bundle(cut, tmp_path / "out", trust)
    assert not (tmp_path / "out").exists()


def test_a_download_cut_between_files_is_cut_short(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    with pytest.raises(TruncatedBundleError, match="the bundle archive is cut short or corrupt"):
        verify_bundle(_cut_inside_header(bundle, 3, tmp_path), trust)


def _signature_doc(bundle: Path) -> dict[str, str]:
    return json.loads(next(d for m, d in _members(bundle) if m.name == "manifest.sig"))


def test_another_signature_algorithm_is_named(bundle: Path, trust: TrustStore) -> None:
    doc = {**_signature_doc(bundle), "algorithm": "rsa-pss"}
    other = _rewrite(bundle, "manifest.sig", lambda _: json.dumps(doc).encode())
    with pytest.raises(SignatureError, match=f"{_at(other)}: signature algorithm 'rsa-pss' is not ed25519"):
        verify_bundle(other, trust)


def test_a_signature_that_is_not_strict_base64_is_malformed_not_forged(bundle: Path, trust: TrustStore) -> None:
    doc = _signature_doc(bundle)
    doc["signature"] = doc["signature"][:8] + "!" + doc["signature"][8:]   # lenient base64 would skip the "!"
    damaged = _rewrite(bundle, "manifest.sig", lambda _: json.dumps(doc).encode())
    with pytest.raises(SignatureError, match=f"{_at(damaged)}: manifest.sig is malformed"):
        verify_bundle(damaged, trust)


def test_refusals_of_the_signature_say_what_to_do(bundle: Path, tmp_path: Path) -> None:
    members = [m for m in _members(bundle) if m[0].name != "manifest.sig"]
    with pytest.raises(SignatureError, match=r"unsigned .* sign it with: edgeml build --key KEY$"):
        verify_bundle(_write(tmp_path / "unsigned.edgepkg", members), TrustStore())
    with pytest.raises(SignatureError, match=r"not trusted here; trust the builder's public key with: "
                                             r"edgeml keys trust KEY.pub$"):
        verify_bundle(bundle, TrustStore([SigningKey.generate().public_key]))


# -- the unpacked copy ------------------------------------------------------------------------------

@pytest.fixture
def unpacked(bundle: Path, trust: TrustStore, tmp_path: Path) -> Path:
    unpack_bundle(bundle, tmp_path / "out", trust)
    return tmp_path / "out"


def test_a_file_changed_in_place_with_its_size_kept_is_detected(unpacked: Path, trust: TrustStore) -> None:
    model = unpacked / "model/model.onnx"
    data = bytearray(model.read_bytes())
    data[10] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model.onnx was modified after the bundle was unpacked"):
        load_unpacked(unpacked, trust)


def test_a_file_swapped_for_a_link_is_refused_even_to_identical_bytes(unpacked: Path, trust: TrustStore,
                                                                    tmp_path: Path) -> None:
    model = unpacked / "model/model.onnx"
    elsewhere = tmp_path / "elsewhere.onnx"
    elsewhere.write_bytes(model.read_bytes())
    model.unlink()
    model.symlink_to(elsewhere)
    with pytest.raises(IntegrityError, match=r"model.onnx is missing from the unpacked bundle"):
        load_unpacked(unpacked, trust)


def test_a_deleted_file_is_missing(unpacked: Path, trust: TrustStore) -> None:
    (unpacked / "smoke/input.npz").unlink()
    with pytest.raises(IntegrityError, match=r"input.npz is missing from the unpacked bundle"):
        load_unpacked(unpacked, trust)


def test_a_directory_that_is_not_a_bundle_is_named(tmp_path: Path, trust: TrustStore) -> None:
    (tmp_path / "empty").mkdir()
    empty = tmp_path / "empty"
    with pytest.raises(ManifestError, match=rf"{_at(empty)} is not an unpacked bundle \(.*manifest.json: "):
        load_unpacked(empty, trust)


def test_a_broken_signature_file_in_an_unpacked_bundle_is_named(unpacked: Path, trust: TrustStore) -> None:
    (unpacked / "manifest.sig").write_text("{}")
    with pytest.raises(SignatureError, match=f"{_at(unpacked)}: signature algorithm None is not ed25519"):
        load_unpacked(unpacked, trust)


# -- a failure after verification leaves nothing behind ----------------------------------------------

class SwapOnFirstLookup(Mapping[str, Ed25519PublicKey]):
    """The trust store, with a side effect on its first lookup (made by verification, before the unpack)."""

    def __init__(self, trust: TrustStore, side_effect: object) -> None:
        self.trust, self.side_effect, self.calls = trust, side_effect, 0

    def __getitem__(self, kid: str) -> Ed25519PublicKey:
        self.calls += 1
        if self.calls == 1:
            self.side_effect()  # type: ignore[operator]
        return self.trust[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self.trust)

    def __len__(self) -> int:
        return len(self.trust)


@pytest.mark.parametrize(("replacement", "error", "message"), [
    ("newer", IntegrityError, "changed while it was being unpacked"),     # another validly signed bundle
    ("headless", ManifestError, ": the first member must be manifest.json"),
])
def test_a_bundle_replaced_on_disk_after_verification_is_refused(
        bundle: Path, trust: TrustStore, signing_key: SigningKey, tmp_path: Path, replacement: str,
        error: type[Exception], message: str) -> None:
    # given a file that replaces the bundle while it is being verified (the reader keeps the old file)
    if replacement == "newer":
        other = _pack(tmp_path, signing_key, name="other.edgepkg", version="1.3.0")
    else:
        other = _write(tmp_path / "other.edgepkg", _members(bundle)[2:])
    racing = SwapOnFirstLookup(trust, lambda: os.replace(other, bundle))
    # when it is unpacked, then the unpack notices the change, names the bundle and leaves nothing behind
    with pytest.raises(error, match=f"{_at(bundle)} ?{message}"):
        unpack_bundle(bundle, tmp_path / "out", racing)
    assert racing.calls == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.unpacking-*"))


def test_losing_a_race_for_the_destination_leaves_the_winner_alone(bundle: Path, trust: TrustStore,
                                                                   tmp_path: Path) -> None:
    dest = tmp_path / "out"

    def other_unpacker_wins() -> None:
        dest.mkdir()
        (dest / "theirs.txt").write_text("the other unpack")

    with pytest.raises(OSError):
        unpack_bundle(bundle, dest, SwapOnFirstLookup(trust, other_unpacker_wins))
    assert [p.name for p in dest.iterdir()] == ["theirs.txt"]
    assert not list(tmp_path.glob(".out.unpacking-*"))


def test_leftovers_of_a_crashed_unpack_are_cleared(bundle: Path, trust: TrustStore, tmp_path: Path) -> None:
    stale = tmp_path / f".out.unpacking-{os.getpid()}"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "planted.bin").write_bytes(b"from before the crash")
    unpack_bundle(bundle, tmp_path / "out", trust)
    assert not (tmp_path / "out" / "model" / "planted.bin").exists() and not stale.exists()
    load_unpacked(tmp_path / "out", trust)


def test_the_signature_document_is_kept_with_the_unpacked_files(unpacked: Path, bundle: Path) -> None:
    sig = _signature_doc(bundle)
    assert json.loads((unpacked / "manifest.sig").read_text()) == sig
    assert base64.b64decode(sig["signature"], validate=True)
