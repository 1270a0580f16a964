"""Archive-header bombs (issue 15, finding 2): crafted archives are refused within fixed memory.

A ~50 KB zstd stream whose extended tar header (PAX ``x``/``g``, GNU ``L``/``K``) claims — and, once
decompressed, really holds — 1 GiB made ``tarfile`` read that header whole: `edgeml verify` peaked at
3.2 GB (and *accepted* the bundle, the PAX header being a comment), a GNU long name at 7.4 GB. The same
header inserted into a genuine signed bundle needs no key at all, nor does a flood of a million
directory entries (tarfile keeps every member it has seen: 480 MB).

Each attack runs the real programs (`edgeml verify`, `edgeml-agent install`, `edgeml-fleet serve`) in
their own process and reads that process's peak RSS from the kernel. The bound asserted (150 MB) is
generous on purpose — measured peaks are 33-55 MB — because RSS is what is being bounded, not time. An
address-space limit of 1 GiB on the child keeps a regressed reader from taking the machine with it.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edgeml.bundle import SigningKey
from edgeml.fleet.bootstrap import create_first_admin
from tests.fleet.server_process import fleet_server
from tests.security.crafted_archives import GIB, bomb_stream, genuine_bundle, header, split_at_payload, zstd

PEAK_RSS_LIMIT_MB = 150
ADDRESS_SPACE_LIMIT = 1 << 30
EXIT_VERIFY, EXIT_AGENT_FAILURE = 3, 1

Attack = Callable[[bytes], bytes]


def _extension_first(kind: bytes) -> Attack:
    return lambda genuine: bomb_stream(b"", kind, genuine)


def _extension_before_payload(kind: bytes) -> Attack:
    def build(genuine: bytes) -> bytes:
        head, rest = split_at_payload(genuine)
        return bomb_stream(head, kind, rest)
    return build


def _directory_flood(genuine: bytes) -> bytes:
    head, rest = split_at_payload(genuine)
    ten_thousand = zstd(header(b"model", 0, b"5") * 10_000)   # a million entries, never all in memory
    return zstd(head) + ten_thousand * 100 + zstd(rest)


# name -> (archive from a genuine bundle, what the refusal says)
ATTACKS: dict[str, tuple[Attack, str]] = {
    "pax-header-first": (_extension_first(b"x"), f"extended tar header (x) claims {GIB} bytes"),
    "pax-global-header-first": (_extension_first(b"g"), f"extended tar header (g) claims {GIB} bytes"),
    "gnu-long-name-first": (_extension_first(b"L"), f"extended tar header (L) claims {GIB} bytes"),
    "gnu-long-link-first": (_extension_first(b"K"), f"extended tar header (K) claims {GIB} bytes"),
    "pax-header-in-signed-bundle": (_extension_before_payload(b"x"), f"extended tar header (x) claims {GIB} bytes"),
    "directory-flood-in-signed-bundle": (_directory_flood, "more than 10000 members"),
}


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    key = SigningKey.generate()
    (tmp_path / "ci.pub").write_bytes(key.public_pem())
    return key


def _crafted(tmp_path: Path, key: SigningKey, attack: str) -> Path:
    """The attack built from a genuine bundle of version 2.0.0 (so an agent with 1.0.0 installs it)."""
    build, _ = ATTACKS[attack]
    path = tmp_path / f"{attack}.edgepkg"
    path.write_bytes(build(genuine_bundle(tmp_path, key, version="2.0.0")))
    assert path.stat().st_size < 100_000   # a small file: the size is all in the claim
    return path


# Runs the program in a grandchild and reports its exit status and peak RSS. The detour matters: a
# child's ru_maxrss includes what its parent had mapped when it forked (vfork: the parent's own peak),
# so measured straight from pytest it would include pytest's own memory; this small parent has ~10 MB.
_MEASURE = """
import json, os, resource, sys
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]),) * 2)
    os.execv(sys.executable, [sys.executable, *sys.argv[3:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, f)
"""


def run_measured(args: list[str], tmp_path: Path, timeout: float = 120) -> tuple[int, str, float]:
    """Run ``python ARGS`` under a 1 GiB address-space limit; (exit code, start of stderr, peak RSS in MB)."""
    err, result = tmp_path / "stderr.txt", tmp_path / "measured.json"
    with open(err, "wb") as stderr:
        subprocess.run([sys.executable, "-c", _MEASURE, str(result), str(ADDRESS_SPACE_LIMIT), *args],
                       stdout=subprocess.DEVNULL, stderr=stderr, timeout=timeout, check=True)
    with open(err, "rb") as f:   # only the start: a regressed reader may print a 1 GiB member name
        text = f.read(8192).decode("utf-8", "replace")
    measured = json.loads(result.read_text())
    return int(measured["rc"]), text, measured["maxrss_kb"] / 1024


def _assert_refused(rc: int, stderr: str, peak_mb: float, expected_rc: int, message: str) -> None:
    assert "Traceback" not in stderr and "MemoryError" not in stderr, stderr[:2000]
    assert rc == expected_rc, stderr[:2000]
    assert message in stderr, stderr[:2000]
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_edgeml_verify_refuses_the_bomb_in_fixed_memory(attack: str, tmp_path: Path, key: SigningKey) -> None:
    crafted = _crafted(tmp_path, key, attack)
    rc, stderr, peak = run_measured(["-m", "edgeml.cli", "verify", str(crafted), "--trust", str(tmp_path / "ci.pub")],
                                    tmp_path)
    _assert_refused(rc, stderr, peak, EXIT_VERIFY, ATTACKS[attack][1])


@pytest.mark.parametrize("attack", ["pax-header-first", "gnu-long-name-first", "directory-flood-in-signed-bundle"])
def test_agent_install_refuses_the_bomb_in_fixed_memory_and_keeps_the_installed_model(
        attack: str, tmp_path: Path, key: SigningKey) -> None:
    # given an agent data directory where the genuine bundle is installed and current
    data = tmp_path / "agent-data"
    genuine = tmp_path / "genuine-copy.edgepkg"
    genuine.write_bytes(genuine_bundle(tmp_path, key))
    install = ["-m", "edgeml_agent.cli", "install", "--data-dir", str(data), "--trust", str(tmp_path / "ci.pub")]
    assert run_measured([*install, str(genuine)], tmp_path)[0] == 0
    # when the crafted archive is installed, then it is refused with the reason, in fixed memory
    rc, stderr, peak = run_measured([*install, str(_crafted(tmp_path, key, attack))], tmp_path)
    _assert_refused(rc, stderr, peak, EXIT_AGENT_FAILURE, ATTACKS[attack][1])
    # and the installed model is untouched, with nothing of the crafted archive beside it
    model_dir = data / "versions" / "tiny"
    assert (model_dir / "current").read_text().strip() == "1.0.0"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1.0.0", "current"]


def _server_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _cap_address_space(pid: int) -> None:
    """What the server already maps plus 1 GiB: a regressed reader fails instead of eating the machine."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            cap = int(line.split()[1]) * 1024 + ADDRESS_SPACE_LIMIT
            resource.prlimit(pid, resource.RLIMIT_AS, (cap, cap))
            return


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_fleet_upload_of_a_bomb_is_a_4xx_in_fixed_memory_and_the_server_keeps_serving(
        database: str, tmp_path: Path, key: SigningKey, request: pytest.FixtureRequest) -> None:
    data = tmp_path / "fleet"
    data.mkdir()
    db: str | None = None
    if database == "postgres":
        from tests.support.postgres import temporary_database

        ctx = temporary_database()
        db = ctx.__enter__()
        request.addfinalizer(lambda: ctx.__exit__(None, None, None))
    admin = create_first_admin(db or f"sqlite:///{data / 'fleet.db'}")
    auth = {"Authorization": f"Bearer {admin}"}
    crafted = _crafted(tmp_path, key, "pax-header-first").read_bytes()
    with fleet_server(data, db=db) as server, httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        _cap_address_space(server.process.pid)
        r = http.post("/v1/keys", json={"name": "ci", "public_pem": key.public_pem().decode()})
        assert r.status_code == 201, r.text
        before = _server_peak_rss_mb(server.process.pid)
        # when the 50 KB bomb is uploaded (twice: the finding saw 7.5 GB after two)
        for _ in range(2):
            r = http.post("/v1/bundles", content=crafted, headers={"Content-Type": "application/octet-stream"})
            # then it is a client error that says why
            assert r.status_code == 400, r.text[:2000]
            assert f"extended tar header (x) claims {GIB} bytes" in r.json()["detail"]
        # and the server's peak RSS barely moved
        peak = _server_peak_rss_mb(server.process.pid)
        assert peak < before + 64, f"server peak RSS {before:.0f} MB -> {peak:.0f} MB"
        # and it keeps serving: nothing was stored, and the genuine bundle is accepted
        assert http.get("/v1/bundles").json() == []
        r = http.post("/v1/bundles", content=genuine_bundle(tmp_path, key),
                      headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text[:2000]
        assert [b["name"] for b in http.get("/v1/bundles").json()] == ["tiny"]
